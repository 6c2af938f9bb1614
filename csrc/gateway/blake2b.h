// BLAKE2b (RFC 7693), unkeyed, digest of 1..64 bytes: the hash of the gateway's prefix keys and
// rendezvous scores, equal byte for byte to Python's hashlib.blake2b(data, digest_size=n).
#pragma once

#include <cstddef>
#include <cstdint>

namespace llmaas::gw {

// An incremental hash: init once, update with any number of pieces, final once.
class Blake2b {
 public:
  explicit Blake2b(size_t digest_size);
  void update(const void* data, size_t size);
  // Writes digest_size bytes to out; the object must not be updated afterwards.
  void final(uint8_t* out);

 private:
  void compress(bool last);

  uint64_t h_[8];
  uint64_t counter_[2] = {0, 0};  // bytes hashed so far, 128-bit little-endian
  uint8_t block_[128];
  size_t filled_ = 0;  // bytes of block_ in use; a full block waits until more data or final
  size_t digest_size_;
};

void blake2b(const void* data, size_t size, uint8_t* out, size_t digest_size);

}  // namespace llmaas::gw
