// Writes an R x 32 block of y from the vdpbf16ps kernels' accumulators (linear_bf16.cpp,
// linear_q4_1.cpp): acc[r][0] holds columns 0-15 of row r, acc[r][1] columns 16-31; only the first
// `cols` columns are written, rows ldy elements apart, as fp32 or rounded to bf16, each after the
// block's `bias` (its first `cols` columns, fp32) is added, when there is one.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace llmaas {

template <int R, typename Out>
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"), always_inline)) inline void store_tile(
    const __m512 (&acc)[R][2], Out* y, int64_t ldy, int64_t cols, const float* bias) {
  const __mmask16 lo = static_cast<__mmask16>((1u << std::min<int64_t>(cols, 16)) - 1);
  const __mmask16 hi = static_cast<__mmask16>((1u << std::max<int64_t>(cols - 16, 0)) - 1);
  __m512 bias_lo = _mm512_setzero_ps(), bias_hi = _mm512_setzero_ps();
  if (bias != nullptr) {
    bias_lo = _mm512_maskz_loadu_ps(lo, bias);
    bias_hi = _mm512_maskz_loadu_ps(hi, bias + 16);
  }
  for (int r = 0; r < R; ++r) {
    const __m512 v0 = bias != nullptr ? _mm512_add_ps(acc[r][0], bias_lo) : acc[r][0];
    const __m512 v1 = bias != nullptr ? _mm512_add_ps(acc[r][1], bias_hi) : acc[r][1];
    if constexpr (sizeof(Out) == 4) {
      _mm512_mask_storeu_ps(y + r * ldy, lo, v0);
      _mm512_mask_storeu_ps(y + r * ldy + 16, hi, v1);
    } else {
      // vcvtneps2bf16 rounds to nearest even, as f32_to_bf16 does (it also flushes denormals,
      // which activations never are).
      _mm256_mask_storeu_epi16(y + r * ldy, lo, (__m256i)_mm512_cvtneps_pbh(v0));
      _mm256_mask_storeu_epi16(y + r * ldy + 16, hi, (__m256i)_mm512_cvtneps_pbh(v1));
    }
  }
}

}  // namespace llmaas
#endif
