// BLAKE2b written from RFC 7693: section 2 (parameters), 3.1 (G), 3.2 (F), 3.3 (padding and the
// parameter block of an unkeyed hash). Little-endian word loads are done byte by byte so the code
// does not depend on the host's byte order.
#include "blake2b.h"

#include <cassert>
#include <cstring>

namespace llmaas::gw {
namespace {

constexpr uint64_t kIv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

// The message word permutations of the ten rounds; rounds 10 and 11 reuse rows 0 and 1.
constexpr uint8_t kSigma[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

inline uint64_t rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

inline uint64_t load_le64(const uint8_t* p) {
  uint64_t x = 0;
  for (int i = 7; i >= 0; --i) x = (x << 8) | p[i];
  return x;
}

inline void mix(uint64_t* v, int a, int b, int c, int d, uint64_t x, uint64_t y) {
  v[a] = v[a] + v[b] + x;
  v[d] = rotr(v[d] ^ v[a], 32);
  v[c] = v[c] + v[d];
  v[b] = rotr(v[b] ^ v[c], 24);
  v[a] = v[a] + v[b] + y;
  v[d] = rotr(v[d] ^ v[a], 16);
  v[c] = v[c] + v[d];
  v[b] = rotr(v[b] ^ v[c], 63);
}

}  // namespace

Blake2b::Blake2b(size_t digest_size) : digest_size_(digest_size) {
  assert(digest_size >= 1 && digest_size <= 64);
  std::memcpy(h_, kIv, sizeof(h_));
  h_[0] ^= 0x01010000ULL ^ digest_size;  // fanout 1, depth 1, no key
}

void Blake2b::compress(bool last) {
  uint64_t m[16];
  for (int i = 0; i < 16; ++i) m[i] = load_le64(block_ + 8 * i);
  uint64_t v[16];
  for (int i = 0; i < 8; ++i) {
    v[i] = h_[i];
    v[i + 8] = kIv[i];
  }
  v[12] ^= counter_[0];
  v[13] ^= counter_[1];
  if (last) v[14] = ~v[14];
  for (int round = 0; round < 12; ++round) {
    const uint8_t* s = kSigma[round % 10];
    mix(v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
    mix(v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
    mix(v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
    mix(v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
    mix(v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
    mix(v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
    mix(v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
    mix(v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
  for (int i = 0; i < 8; ++i) h_[i] ^= v[i] ^ v[i + 8];
}

void Blake2b::update(const void* data, size_t size) {
  const uint8_t* in = static_cast<const uint8_t*>(data);
  while (size > 0) {
    if (filled_ == sizeof(block_)) {  // more data follows, so this block is not the last
      counter_[0] += sizeof(block_);
      counter_[1] += counter_[0] < sizeof(block_);
      compress(false);
      filled_ = 0;
    }
    size_t take = sizeof(block_) - filled_;
    if (take > size) take = size;
    std::memcpy(block_ + filled_, in, take);
    filled_ += take;
    in += take;
    size -= take;
  }
}

void Blake2b::final(uint8_t* out) {
  counter_[0] += filled_;
  counter_[1] += counter_[0] < filled_;
  std::memset(block_ + filled_, 0, sizeof(block_) - filled_);
  compress(true);
  for (size_t i = 0; i < digest_size_; ++i) out[i] = static_cast<uint8_t>(h_[i / 8] >> (8 * (i % 8)));
}

void blake2b(const void* data, size_t size, uint8_t* out, size_t digest_size) {
  Blake2b hash(digest_size);
  hash.update(data, size);
  hash.final(out);
}

}  // namespace llmaas::gw
