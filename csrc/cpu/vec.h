// fp32 vectors as GCC vector extensions, and the few operations the kernels need.
//
// One kernel source serves every instruction-set variant: it is written against
// a vector type V whose width matches the variant (16 lanes for AVX-512, 8 for
// AVX2, 4 for SSE), so GCC maps each operation onto one native instruction.
// A vector wider than the target's registers would be lowered element by element.
// Everything is always_inline so that no vector crosses a call boundary, where
// its calling convention would depend on the ISA.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#define LLMAAS_INLINE __attribute__((always_inline)) inline

namespace llmaas {

template <int kWidth>
struct Simd;
template <>
struct Simd<16> {
  typedef float F __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
};
template <>
struct Simd<8> {
  typedef float F __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
};
template <>
struct Simd<4> {
  typedef float F __attribute__((vector_size(16)));
  typedef int32_t I __attribute__((vector_size(16)));
};

template <typename V>
constexpr int64_t kLanesOf = sizeof(V) / sizeof(float);

template <typename V>
LLMAAS_INLINE V load_vec(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V>
LLMAAS_INLINE void store_vec(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// {0, 1, 2, ...}: with a comparison, masks the lanes past the end of a row.
template <typename V>
LLMAAS_INLINE V lane_index() {
  V v;
  for (int64_t i = 0; i < kLanesOf<V>; ++i) v[i] = static_cast<float>(i);
  return v;
}

// Halving down to 4 lanes, then scalar: log2(width) dependent steps rather
// than width - 1.
template <typename V>
LLMAAS_INLINE float reduce_add(V v) {
  if constexpr (kLanesOf<V> == 16) {
    return reduce_add(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                      __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  } else if constexpr (kLanesOf<V> == 8) {
    return reduce_add(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
  } else {
    return (v[0] + v[2]) + (v[1] + v[3]);
  }
}

template <typename V>
LLMAAS_INLINE float reduce_max(V v) {
  if constexpr (kLanesOf<V> == 16) {
    const auto lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    const auto hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    return reduce_max(lo > hi ? lo : hi);
  } else if constexpr (kLanesOf<V> == 8) {
    const auto lo = __builtin_shufflevector(v, v, 0, 1, 2, 3), hi = __builtin_shufflevector(v, v, 4, 5, 6, 7);
    return reduce_max(lo > hi ? lo : hi);
  } else {
    return std::max(std::max(v[0], v[2]), std::max(v[1], v[3]));
  }
}

// exp(x) for x <= 0, such as scores minus their running max: Cephes' range
// reduction and degree-6 polynomial, within 2 ulp. Rounding to an integer uses
// the 1.5 * 2^23 trick, whose sum's low bits are that integer, so it needs no
// vector floor or conversion. NaN stays NaN, so poisoned inputs show.
template <typename V>
LLMAAS_INLINE V exp_nonpositive(V x) {
  using VI = typename Simd<kLanesOf<V>>::I;
  const V lowest = V{} - 87.0f;  // exp(-87) is negligible next to the row max's exp(0)
  x = x < lowest ? lowest : x;
  const V t = x * 1.44269504f + 12582912.0f;
  const V n = t - 12582912.0f;
  const V r = x - n * 0.693359375f + n * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const VI two_to_n = ((VI)t - 0x4B400000 + 127) << 23;
  return p * (V)two_to_n;
}

}  // namespace llmaas
