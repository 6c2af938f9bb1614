// The per-work-item attention kernel of paged_attention.cpp for bf16 caches on avx512_bf16 CPUs.
//
// Same work items, spans and online softmax as attend_item.h, but K and V are read in place, as
// bf16, instead of being widened into fp32 scratch first. The staged copy was twice the cache's
// bytes, written once and read by each of the G query rows from L2: at batch 32 that traffic,
// not DRAM, bounded the old kernel (17-20 GB/s with the cache in L3, 10 from DRAM; 2026-11-28
// notes in bench/RESULTS.md). Here a span's K and V rows are touched in the cache itself, where
// they stay in L1 for the G rows of their kv head.
//   Scores: a row's bf16 query (unscaled) against 16 keys at a time, vdpbf16ps over head_dim, one
//   accumulator per key; the 16 accumulators are summed lane-wise by a 4-level shuffle tree into
//   one vector of 16 scores (46 instructions, not 16 horizontal sums), scaled once.
//   Weighted sum: each V row's 32-bit words give their even elements by a 16-bit shift and their
//   odd ones by a mask, so V is widened in registers; accumulators hold a row's dims as
//   [evens | odds] per 32 dims, put back in order when the output is written.
// Every query row is computed the same way whatever its tile, batch or span count: a sequence's
// tokens do not depend on what shares its step. Head dims 64 and 128 (multiples of 32).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "attend_item.h"

namespace llmaas::attention {

#define LLMAAS_BF16_ATTN_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

// Lane j of the result is the sum of the 16 lanes of v[sum16_slot(j)]. The tree pairs quarters,
// then halves of quarters, so results land transposed as 4 x 4; callers store key j's
// accumulator at slot sum16_slot(j) to read the scores in key order.
constexpr int sum16_slot(int j) { return (j % 4) * 4 + j / 4; }

LLMAAS_BF16_ATTN_TARGET LLMAAS_INLINE __m512 sum16(const __m512 (&v)[16]) {
  __m512 u[8], w[4], x[2];
  for (int k = 0; k < 8; ++k)
    u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
  for (int k = 0; k < 4; ++k)
    w[k] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0x88),
                         _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0xDD));
  for (int k = 0; k < 2; ++k)
    x[k] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * k], w[2 * k + 1], 0x44), _mm512_shuffle_ps(w[2 * k], w[2 * k + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(x[0], x[1], 0x88), _mm512_shuffle_ps(x[0], x[1], 0xDD));
}

// Scores of one query row q (kD bf16) against keys [0, n) of a span, key j's row at
// cache + key_offset[j]: s[j] = scale * q . k_j, n rounded up to 16 (the extra lanes hold 0).
template <int64_t kD>
LLMAAS_BF16_ATTN_TARGET LLMAAS_INLINE void scores_bf16(const uint16_t* __restrict q, const uint16_t* cache,
                                                       const int64_t* key_offset, int64_t n, float scale,
                                                       float* __restrict s) {
  constexpr int64_t kChunks = kD / 32;
  __m512bh qv[kChunks];
  for (int64_t c = 0; c < kChunks; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(q + 32 * c);
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    __m512 dots[16];
    for (int jj = 0; jj < 16; ++jj) {
      __m512 dot = _mm512_setzero_ps();
      if (j0 + jj < n) {
        const uint16_t* k = cache + key_offset[j0 + jj];
        for (int64_t c = 0; c < kChunks; ++c)
          dot = _mm512_dpbf16_ps(dot, qv[c], (__m512bh)_mm512_loadu_si512(k + 32 * c));
      }
      dots[sum16_slot(jj)] = dot;
    }
    _mm512_storeu_ps(s + j0, _mm512_mul_ps(sum16(dots), _mm512_set1_ps(scale)));
  }
}

// acc[r] = acc[r] * alpha[r] + sum_j p[r][j] * v_j over keys [0, n) for kRows rows, dims
// [32 * c0, 32 * (c0 + kC)) of rows kD long; p rows p_stride apart; acc in [evens | odds] order.
template <int64_t kD, int kRows, int kC>
LLMAAS_BF16_ATTN_TARGET LLMAAS_INLINE void weighted_sum_bf16(const uint16_t* cache, const int64_t* key_offset,
                                                             int64_t n, const float* p, int64_t p_stride,
                                                             const float* alpha, float* acc, int64_t c0) {
  __m512 part[kRows][2 * kC];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < 2 * kC; ++c)
      part[r][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + r * kD + 32 * c0 + 16 * c), _mm512_set1_ps(alpha[r]));
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* v = cache + key_offset[j] + 32 * c0;
    __m512 wide[2 * kC];
    for (int c = 0; c < kC; ++c) {
      const __m512i words = _mm512_loadu_si512(v + 32 * c);
      wide[2 * c] = _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
      wide[2 * c + 1] = _mm512_castsi512_ps(_mm512_and_si512(words, high));
    }
    for (int r = 0; r < kRows; ++r) {
      const __m512 pr = _mm512_set1_ps(p[r * p_stride + j]);
      for (int c = 0; c < 2 * kC; ++c) part[r][c] = _mm512_fmadd_ps(pr, wide[c], part[r][c]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < 2 * kC; ++c) _mm512_storeu_ps(acc + r * kD + 32 * c0 + 16 * c, part[r][c]);
}

// The weighted sum for `rows` rows, in groups that keep accumulators and widened V in registers.
template <int64_t kD>
LLMAAS_BF16_ATTN_TARGET LLMAAS_INLINE void weighted_sum_rows(const uint16_t* cache, const int64_t* key_offset,
                                                             int64_t n, const float* p, int64_t p_stride,
                                                             const float* alpha, float* acc, int64_t rows) {
  constexpr int kC = 2;  // 64 dims at a time: 4 accumulators a row
  for (int64_t c0 = 0; c0 < kD / 32; c0 += kC) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4)
      weighted_sum_bf16<kD, 4, kC>(cache, key_offset, n, p + r * p_stride, p_stride, alpha + r, acc + r * kD, c0);
    for (; r < rows; ++r)
      weighted_sum_bf16<kD, 1, kC>(cache, key_offset, n, p + r * p_stride, p_stride, alpha + r, acc + r * kD, c0);
  }
}

// attend_item for bf16 caches and head dim kD (64 or 128); scratch as attend_item's.
template <int64_t kD>
LLMAAS_BF16_ATTN_TARGET void attend_item_bf16(const PagedAttentionArgs& a, const WorkItem& w, Scratch& sc) {
  static_assert(kD % 64 == 0);
  using V = Simd<16>::F;
  const int64_t G = a.num_heads / a.num_kv_heads, bs = a.block_size;
  const int64_t g0 = w.g_begin, heads = w.g_end - w.g_begin, H = heads * G;
  const int64_t kv_row = a.num_kv_heads * kD, block_elems = bs * kv_row;
  const int64_t q0 = a.query_start_loc[w.seq];
  const int64_t first_pos = a.context_lens[w.seq] - (a.query_start_loc[w.seq + 1] - q0);
  const int64_t tokens = w.q_end - w.q_begin, rows = tokens * H;
  const int64_t last_pos = first_pos + w.q_end - 1;
  const int64_t first_key = window_start(first_pos + w.q_begin, a.sliding_window);  // as in attend_item
  const int64_t span = span_keys(true, bs), s_stride = pad(span);

  // Row t * H + h is query head g0 * G + h of token t, as in attend_item; bf16, unscaled.
  uint16_t* q = reinterpret_cast<uint16_t*>(sc.q.data());
  const uint16_t* query = static_cast<const uint16_t*>(a.query);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < H; ++h)
      std::memcpy(q + (t * H + h) * kD, query + (q0 + w.q_begin + t) * a.q_token_stride + (g0 * G + h) * a.q_head_stride,
                  kD * sizeof(uint16_t));
  float* acc = sc.acc.data();
  std::fill_n(sc.m.data(), rows, -INFINITY);
  std::fill_n(sc.l.data(), rows, 0.0f);
  std::fill_n(acc, rows * kD, 0.0f);

  const int32_t* table = a.block_tables + w.seq * a.max_blocks_per_seq;
  const uint16_t* k_cache = static_cast<const uint16_t*>(a.k_cache) + g0 * kD;
  const uint16_t* v_cache = static_cast<const uint16_t*>(a.v_cache) + g0 * kD;
  int64_t* key_offset = sc.key_offset.data();
  const int64_t item_block_bytes = ((bs - 1) * kv_row + heads * kD) * static_cast<int64_t>(sizeof(uint16_t));
  const int64_t row_bytes = heads * kD * static_cast<int64_t>(sizeof(uint16_t));
  for (int64_t k0 = first_key / bs * bs; k0 <= last_pos; k0 += span) {
    const int64_t n = std::min(span, last_pos + 1 - k0);
    // The next span's blocks, fetched while this one is attended.
    for (int64_t b0 = k0 + span; b0 < std::min(k0 + 2 * span, last_pos + 1); b0 += bs) {
      const int64_t offset = table[b0 / bs] * block_elems;
      for (int64_t j = 0; j < (heads == a.num_kv_heads ? 1 : bs); ++j) {
        prefetch_bytes(k_cache + offset + j * kv_row, heads == a.num_kv_heads ? item_block_bytes : row_bytes);
        prefetch_bytes(v_cache + offset + j * kv_row, heads == a.num_kv_heads ? item_block_bytes : row_bytes);
      }
    }
    for (int64_t j = 0; j < n; ++j) key_offset[j] = table[(k0 + j) / bs] * block_elems + (k0 + j) % bs * kv_row;
    for (int64_t t = 0; t < tokens; ++t) {
      // The token sees the span's keys [skip, skip + n_t), as in attend_item.
      const int64_t pos = first_pos + w.q_begin + t;
      const int64_t skip = std::max<int64_t>(0, window_start(pos, a.sliding_window) - k0);
      const int64_t n_t = std::min(n, pos - k0 + 1) - skip;
      if (n_t <= 0) continue;
      const int64_t* offsets = key_offset + skip;
      for (int64_t g = 0; g < heads; ++g) {
        const int64_t r0 = t * H + g * G;
        float* s = sc.s.data();
        for (int64_t r = 0; r < G; ++r)
          scores_bf16<kD>(q + (r0 + r) * kD, k_cache + g * kD, offsets, n_t, a.scale, s + r * s_stride);
        softmax_rows<V>(G, n_t, &sc.m[r0], &sc.l[r0], sc.alpha.data(), s, s_stride);
        weighted_sum_rows<kD>(v_cache + g * kD, offsets, n_t, s, s_stride, sc.alpha.data(), acc + r0 * kD, G);
      }
    }
  }

  uint16_t* out = static_cast<uint16_t*>(a.out);
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = 1.0f / sc.l[r];
    uint16_t* dst = out + ((q0 + w.q_begin + r / H) * a.num_heads + g0 * G + r % H) * kD;
    const float* ar = acc + r * kD;
    for (int64_t d = 0; d < kD; ++d) dst[d] = f32_to_bf16(ar[d / 32 * 32 + d % 2 * 16 + d % 32 / 2] * inv);
  }
}

#undef LLMAAS_BF16_ATTN_TARGET

}  // namespace llmaas::attention
