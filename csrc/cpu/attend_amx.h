// The per-work-item attention kernel of paged_attention.cpp for bf16 caches on AMX CPUs.
//
// Same work items, spans and online softmax as attend_item.h; the two products run on AMX tiles:
//   Scores, transposed: S^T = K Q^T. A = kr keys x 32 dims of K, loaded in place from a cache
//   block (kr divides the block size, up to 16; rows kv_row apart); B = Q^T in pair form, B[p][r] =
//   (Q[r][2p], Q[r][2p + 1]) for 16 query rows, transposed once per item. 4 tiles of keys at a
//   time; the kr x 16 results are turned into score rows by one 16 x 16 transpose per 16 keys
//   (cheaper than transposing K: one per 16 keys and row block, not one per 32 dims).
//   Softmax: per row over the keys it sees (its causal limit and window), as attend_item's
//   softmax_rows, on a copy of those scores; the probabilities are rounded to bf16 into P, zero
//   for the keys it does not see.
//   Output O += P V: A = 16 rows x 32 keys of P; B = V for 32 keys in pair form, B[p][d] =
//   (V[2p][d], V[2p + 1][d]), interleaved from two key rows; 4 blocks of 16 dims at once. Each
//   row's accumulator is scaled by its softmax alpha and the span's product added in fp32.
// A row's scores depend on its own query and the keys only; past the keys it sees, P is zero and V
// is zero or finite, so a row's output is the same bits whatever the tile, batch or span count:
// every query row, decode or prefill, runs here when the process chose this kernel (tdpbf16ps
// rounds unlike the vdpbf16ps of attend_bf16.h). Head dims 64 and 128.
// Not the default: against attend_bf16.h on a 2-vCPU Sapphire Rapids it prefills 1.16x faster at
// 256-token prompts and 1.4x at 1,024, but decodes up to 8% slower at 1,000 tokens of context
// (bench/RESULTS.md); LLMAAS_CPU_ATTENTION=amx_bf16 picks it for prefill-heavy work.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx.h"
#include "attend_item.h"

namespace llmaas::attention {

// The tile configurations of this kernel (amx.h's keys): C tiles 0-3 and A tile 4 of `rows` rows,
// 64 bytes each; B tile 6 of 16 rows of 64 bytes. Scores take `rows` keys of a cache block (S^T =
// K Q^T), the output product `rows` query rows (O = P V).
constexpr int kAttentionKey = 1000;

LLMAAS_AMX_TARGET inline void attention_configure(int rows) {
  if (g_amx_config == kAttentionKey + rows) return;
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int t = 0; t < 5; ++t) {
    cfg.rows[t] = static_cast<uint8_t>(rows);
    cfg.colsb[t] = 64;
  }
  cfg.rows[6] = 16;
  cfg.colsb[6] = 64;
  amx_load_config(kAttentionKey + rows, cfg);
}

// Keys a score tile takes: the largest divisor of the block size up to 16, so that a tile's keys
// are rows of one cache block, kv_row apart, loaded in place.
inline int key_rows(int64_t block_size) {
  for (int64_t r = std::min<int64_t>(16, block_size); r > 1; --r)
    if (block_size % r == 0) return static_cast<int>(r);
  return 1;
}

// dst[i][j] = rows[j][i] for a 16 x 16 block of dwords; dst rows ld dwords apart.
LLMAAS_AMX_TARGET LLMAAS_INLINE void transpose16x16(const __m512i (&rows)[16], uint32_t* dst, int64_t ld = 16) {
  __m512i a[16], b[16];
  for (int i = 0; i < 16; i += 2) {
    a[i] = _mm512_unpacklo_epi32(rows[i], rows[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(rows[i], rows[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    b[i] = _mm512_unpacklo_epi64(a[i], a[i + 2]);
    b[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 2]);
    b[i + 2] = _mm512_unpacklo_epi64(a[i + 1], a[i + 3]);
    b[i + 3] = _mm512_unpackhi_epi64(a[i + 1], a[i + 3]);
  }
  // b[4q + c] holds, in each 128-bit lane L, rows 4q..4q+3 of column 4L + c: gather lane L of
  // the four quads into output row 4L + c.
  for (int c = 0; c < 4; ++c) {
    const __m512i q01lo = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44);
    const __m512i q01hi = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
    const __m512i q23lo = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44);
    const __m512i q23hi = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
    _mm512_storeu_si512(dst + (0 + c) * ld, _mm512_shuffle_i32x4(q01lo, q23lo, 0x88));
    _mm512_storeu_si512(dst + (4 + c) * ld, _mm512_shuffle_i32x4(q01lo, q23lo, 0xDD));
    _mm512_storeu_si512(dst + (8 + c) * ld, _mm512_shuffle_i32x4(q01hi, q23hi, 0x88));
    _mm512_storeu_si512(dst + (12 + c) * ld, _mm512_shuffle_i32x4(q01hi, q23hi, 0xDD));
  }
}

// Per-thread buffers of attend_item_amx, grown as needed.
struct AmxScratch {
  std::vector<uint16_t> q, q_t, v_pairs, p;
  std::vector<float> s, s_t, row, alpha, pv;
};

inline thread_local AmxScratch g_amx_scratch;

template <typename T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// attend_item for bf16 caches and head dim kD (64 or 128) on AMX; scratch as attend_item's (m, l,
// acc), the rest its own.
template <int64_t kD>
LLMAAS_AMX_TARGET void attend_item_amx(const PagedAttentionArgs& a, const WorkItem& w, Scratch& sc) {
  static_assert(kD % 64 == 0);
  using V = Simd<16>::F;
  constexpr int64_t kChunks = kD / 32;
  const int64_t G = a.num_heads / a.num_kv_heads, bs = a.block_size;
  const int64_t g0 = w.g_begin, heads = w.g_end - w.g_begin;
  const int64_t kv_row = a.num_kv_heads * kD, block_elems = bs * kv_row;
  const int64_t q0 = a.query_start_loc[w.seq];
  const int64_t first_pos = a.context_lens[w.seq] - (a.query_start_loc[w.seq + 1] - q0);
  const int64_t tokens = w.q_end - w.q_begin, rows_g = tokens * G;  // rows of one kv head
  const int64_t last_pos = first_pos + w.q_end - 1;
  const int64_t first_key = window_start(first_pos + w.q_begin, a.sliding_window);
  const int64_t span = span_keys(true, bs);
  const int64_t span16 = (span + 31) / 32 * 32, s_stride = span16;
  AmxScratch& x = g_amx_scratch;
  const int64_t row_blocks = (rows_g + 15) / 16;
  grow(x.q, heads * rows_g * kD);
  grow(x.q_t, heads * row_blocks * kChunks * 512);
  grow(x.s_t, (span16 + 16) * 16);
  grow(x.v_pairs, heads * span16 * kD);
  grow(x.p, rows_g * s_stride);
  grow(x.s, row_blocks * 16 * s_stride);
  grow(x.row, s_stride + kPad);
  grow(x.alpha, rows_g);
  grow(x.pv, 16 * 64);

  // Row (g, t, r): query head (g0 + g) * G + r of token t; per kv head, rows t * G + r.
  const uint16_t* query = static_cast<const uint16_t*>(a.query);
  for (int64_t g = 0; g < heads; ++g)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t r = 0; r < G; ++r)
        std::memcpy(&x.q[((g * tokens + t) * G + r) * kD],
                    query + (q0 + w.q_begin + t) * a.q_token_stride + ((g0 + g) * G + r) * a.q_head_stride,
                    kD * sizeof(uint16_t));
  // Q^T in pair form, the scores' B tiles: (g, row block, chunk c) holds 16 dword rows (the chunk's
  // dim pairs) of 16 query rows, zero past the head's rows.
  for (int64_t g = 0; g < heads; ++g)
    for (int64_t b = 0; b < row_blocks; ++b)
      for (int64_t c = 0; c < kChunks; ++c) {
        __m512i rows[16];
        for (int64_t r = 0; r < 16; ++r)
          rows[r] = 16 * b + r < rows_g ? _mm512_loadu_si512(&x.q[(g * rows_g + 16 * b + r) * kD + 32 * c])
                                        : _mm512_setzero_si512();
        transpose16x16(rows, reinterpret_cast<uint32_t*>(&x.q_t[((g * row_blocks + b) * kChunks + c) * 512]));
      }
  const int kr = key_rows(bs);
  float* acc = sc.acc.data();  // rows (g, t, r), kD each
  std::fill_n(sc.m.data(), heads * rows_g, -INFINITY);
  std::fill_n(sc.l.data(), heads * rows_g, 0.0f);
  std::fill_n(acc, heads * rows_g * kD, 0.0f);

  const int32_t* table = a.block_tables + w.seq * a.max_blocks_per_seq;
  const uint16_t* k_cache = static_cast<const uint16_t*>(a.k_cache);
  const uint16_t* v_cache = static_cast<const uint16_t*>(a.v_cache);
  int64_t* key_offset = sc.key_offset.data();
  for (int64_t k0 = first_key / bs * bs; k0 <= last_pos; k0 += span) {
    const int64_t n = std::min(span, last_pos + 1 - k0);
    const int64_t groups16 = (n + 15) / 16, groups32 = (n + 31) / 32;
    for (int64_t j = 0; j < n; ++j) key_offset[j] = table[(k0 + j) / bs] * block_elems + (k0 + j) % bs * kv_row;
    // V rows no query row sees are zero, not read: P is zero there, and 0 x NaN (a slot before the
    // window, never written) would not be. Keys before the item's first window start are such.
    const int64_t first_seen = std::max<int64_t>(0, first_key - k0);
    auto seen = [n, first_seen](int64_t j) { return j >= first_seen && j < n; };
    // V pairs of every kv head of the item, key group by key group: a group's blocks hold all heads'
    // rows side by side, so they are read once, in order. Head g's tiles start at g * span16 * kD.
    const int64_t head_elems = span16 * kD;
    const __m512i interleave = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                                39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i high_interleave = _mm512_add_epi16(interleave, _mm512_set1_epi16(16));
    for (int64_t i = 0; i < groups32; ++i) {
      for (int64_t g = 0; g < heads; ++g) {
        const int64_t head = (g0 + g) * kD;
        // V pairs: tile (keys 32i.., dims 16b..) at v_pairs[g][(i * kD / 16 + b) * 512], 16 rows of 32 words.
        uint16_t* v_head = &x.v_pairs[g * head_elems];
        for (int64_t p = 0; p < 16; ++p) {
          const int64_t ka = 32 * i + 2 * p, kb = ka + 1;
          for (int64_t b = 0; b < kD / 32; ++b) {
            const __m512i va = seen(ka) ? _mm512_loadu_si512(v_cache + key_offset[ka] + head + 32 * b)
                                        : _mm512_setzero_si512();
            const __m512i vb = seen(kb) ? _mm512_loadu_si512(v_cache + key_offset[kb] + head + 32 * b)
                                        : _mm512_setzero_si512();
            // Dims 32b..32b+15 from the low halves, 32b+16.. from the high ones.
            _mm512_storeu_si512(&v_head[((i * kD / 16 + 2 * b) * 16 + p) * 32],
                                _mm512_permutex2var_epi16(va, interleave, vb));
            _mm512_storeu_si512(&v_head[((i * kD / 16 + 2 * b + 1) * 16 + p) * 32],
                                _mm512_permutex2var_epi16(va, high_interleave, vb));
          }
        }
      }
    }
    for (int64_t g = 0; g < heads; ++g) {
      for (int64_t r0 = 0; r0 < rows_g; r0 += 16) {
        const int rows = static_cast<int>(std::min<int64_t>(16, rows_g - r0));
        // S^T = K Q^T, 4 tiles of kr keys at a time, each tile kr rows of one cache block loaded in
        // place; then transposed into the block's score rows, 16 keys at a time.
        attention_configure(kr);
        const uint16_t* q_t = &x.q_t[(g * row_blocks + r0 / 16) * kChunks * 512];
        const int64_t head = (g0 + g) * kD;
        for (int64_t kb0 = 0; kb0 < n; kb0 += 4 * kr) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t c = 0; c < kChunks; ++c) {
            amx_fence();
            _tile_loadd(6, q_t + c * 512, 64);
#define LLMAAS_SCORE(t)                                                                                  \
  if (kb0 + t * kr < n) {                                                                                \
    _tile_loadd(4, k_cache + key_offset[kb0 + t * kr] + head + 32 * c, kv_row * 2);                     \
    _tile_dpbf16ps(t, 4, 6);                                                                             \
  }
            LLMAAS_SCORE(0) LLMAAS_SCORE(1) LLMAAS_SCORE(2) LLMAAS_SCORE(3)
#undef LLMAAS_SCORE
          }
          float* st = &x.s_t[kb0 * 16];
          _tile_stored(0, st, 64);
          if (kb0 + kr < n) _tile_stored(1, st + kr * 16, 64);
          if (kb0 + 2 * kr < n) _tile_stored(2, st + 2 * kr * 16, 64);
          if (kb0 + 3 * kr < n) _tile_stored(3, st + 3 * kr * 16, 64);
        }
        for (int64_t j = 0; j < groups16; ++j) {
          __m512i keys[16];
          for (int kk = 0; kk < 16; ++kk) keys[kk] = _mm512_loadu_si512(&x.s_t[(16 * j + kk) * 16]);
          transpose16x16(keys, reinterpret_cast<uint32_t*>(&x.s[r0 * s_stride + 16 * j]), s_stride);
        }
        attention_configure(rows);
        // Each row's softmax over the keys it sees; P in bf16, zero elsewhere.
        for (int r = 0; r < rows; ++r) {
          const int64_t row = r0 + r, t = row / G, state = g * rows_g + row;
          const int64_t pos = first_pos + w.q_begin + t;
          const int64_t skip = std::max<int64_t>(0, window_start(pos, a.sliding_window) - k0);
          const int64_t n_t = std::min(n, pos - k0 + 1) - skip;
          uint16_t* p = &x.p[row * s_stride];
          std::fill_n(p, groups32 * 32, uint16_t{0});
          if (n_t <= 0) {
            x.alpha[row] = 1.0f;
            continue;
          }
          float* tmp = x.row.data();
          for (int64_t j = 0; j < n_t; ++j) tmp[j] = x.s[row * s_stride + skip + j] * a.scale;
          softmax_rows<V>(1, n_t, &sc.m[state], &sc.l[state], &x.alpha[row], tmp, s_stride);
          for (int64_t j = 0; j < n_t; ++j) p[skip + j] = f32_to_bf16(tmp[j]);
        }
        // O += P V, 64 dims at a time.
        for (int64_t d0 = 0; d0 < kD; d0 += 64) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t i = 0; i < groups32; ++i) {
            amx_fence();
            _tile_loadd(4, &x.p[r0 * s_stride + 32 * i], s_stride * 2);
#define LLMAAS_PV(t)                                                                  \
  _tile_loadd(6, &x.v_pairs[g * head_elems + ((i * kD / 16 + d0 / 16 + t) * 16) * 32], 64); \
  _tile_dpbf16ps(t, 4, 6);
            LLMAAS_PV(0) LLMAAS_PV(1) LLMAAS_PV(2) LLMAAS_PV(3)
#undef LLMAAS_PV
          }
          float* pv = x.pv.data();
          _tile_stored(0, pv, 256);
          _tile_stored(1, pv + 16, 256);
          _tile_stored(2, pv + 32, 256);
          _tile_stored(3, pv + 48, 256);
          for (int r = 0; r < rows; ++r) {
            float* ar = acc + (g * rows_g + r0 + r) * kD + d0;
            const __m512 alpha = _mm512_set1_ps(x.alpha[r0 + r]);
            for (int64_t v = 0; v < 4; ++v)
              _mm512_storeu_ps(ar + 16 * v, _mm512_fmadd_ps(_mm512_loadu_ps(ar + 16 * v), alpha,
                                                            _mm512_loadu_ps(pv + r * 64 + 16 * v)));
          }
        }
      }
    }
  }

  uint16_t* out = static_cast<uint16_t*>(a.out);
  for (int64_t g = 0; g < heads; ++g)
    for (int64_t row = 0; row < rows_g; ++row) {
      const int64_t state = g * rows_g + row, t = row / G, r = row % G;
      const float inv = 1.0f / sc.l[state];
      uint16_t* dst = out + ((q0 + w.q_begin + t) * a.num_heads + (g0 + g) * G + r) * kD;
      const float* ar = acc + state * kD;
      for (int64_t d = 0; d < kD; ++d) dst[d] = f32_to_bf16(ar[d] * inv);
    }
}

}  // namespace llmaas::attention
