// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104): how the native lane checks an API key against
// the hash the token store keeps (gateway/tenancy/tokens.py: HMAC-SHA256(pepper, key)), equal byte
// for byte to Python's hmac.new(pepper, key, hashlib.sha256).digest().
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace llmaas::gw {

class Sha256 {
 public:
  // hardware: with the SHA extensions where the CPU has them (false: the portable code, for tests).
  explicit Sha256(bool hardware = true);
  void update(const void* data, size_t size);
  // Writes 32 bytes to out; the object must not be updated afterwards.
  void final(uint8_t out[32]);

 private:
  void compress(const uint8_t block[64]);

  uint32_t h_[8];
  uint64_t length_ = 0;  // bytes hashed so far
  uint8_t block_[64];
  size_t filled_ = 0;
  bool sha_ni_;
};

// Whether this CPU has the SHA extensions (Sha256 then uses them).
bool sha_ni_available();

// HMAC-SHA256 with its key set up once: each digest copies the two keyed states (the ipad and
// opad blocks already hashed), so a 43-byte message costs two compressions, not four.
class HmacSha256 {
 public:
  explicit HmacSha256(std::string_view key);
  void digest(std::string_view message, uint8_t out[32]) const;

 private:
  Sha256 inner_, outer_;
};

// Compares two 32-byte digests in time that does not depend on where they differ.
bool digests_equal(const uint8_t a[32], const uint8_t b[32]);

}  // namespace llmaas::gw
