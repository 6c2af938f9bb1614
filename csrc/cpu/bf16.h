// bfloat16 <-> float32 by bit manipulation.
//
// bf16 is the top half of an IEEE float32, so widening is a 16-bit shift and
// narrowing is a shift after rounding the dropped half to nearest-even. Plain
// integer arithmetic keeps both vectorizable inside `omp simd` loops.
#pragma once

#include <cstdint>
#include <cstring>

namespace llmaas {

inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  // Rounding would carry a NaN's payload into the exponent (or turn it into
  // infinity); keep it a quiet NaN instead.
  const bool is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(is_nan ? (bits >> 16) | 0x40u : rounded >> 16);
}

}  // namespace llmaas
