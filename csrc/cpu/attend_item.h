// The per-work-item attention kernel of paged_attention.cpp.
//
// A work item is (sequence, tile of query tokens, range of kv heads g0..g1).
// attend_item stages the tile's query heads of those kv heads as fp32 rows,
// pre-scaled, then streams the sequence's K/V a span of cache blocks at a time
// (kSpanKeys): every K/V row fetched from memory serves all the G = H / Hkv
// query rows of its kv head for every token of the tile (GQA and query-tile
// reuse), which is what decode, bound by memory, needs. A cache block holds its
// positions' kv heads side by side, so an item over all kv heads reads each
// block as one contiguous stretch (8 x 3 x 64 bf16 = 3 KB for SmolLM2), which the
// hardware prefetchers stream; one kv head per item read 128 of every 384 bytes,
// and the staging loads waited on memory (~70% of the kernel's time at batch 32).
// Items cover fewer kv heads only when there are too few sequences to keep every
// thread busy. The next span's blocks are prefetched while one span is computed.
// Softmax is online (flash attention): each row keeps a running max and sum, and
// its accumulator is rescaled once per span rather than once per key. With a
// sliding window the walk starts at the block holding the first key of the
// tile's first token's window (a decode reads only its window's blocks), and
// each token attends the part of a span inside its own window. bf16
// blocks are widened into fp32 scratch, a span's blocks one after the other;
// fp32 blocks are read in place, one at a time; everything accumulates in fp32.
// Written once against a vector type V (vec.h) and instantiated per instruction
// set by paged_attention.cpp; included there only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "bf16.h"
#include "kernels.h"
#include "vec.h"

namespace llmaas::attention {

// Rows of scratch are padded to a multiple of the widest vector, so every
// variant sees whole vectors. The padding is zero from construction on and never
// written, so it adds nothing to dot products or accumulators.
constexpr int64_t kPad = 16;

LLMAAS_INLINE int64_t pad(int64_t n) { return (n + kPad - 1) / kPad * kPad; }

// The first key the query at `position` sees: window > 0 keeps the last `window` keys up to
// itself (local attention), 0 all of them.
LLMAAS_INLINE int64_t window_start(int64_t position, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, position - window + 1) : 0;
}

struct WorkItem {
  int64_t cost;     // tokens x keys visible to the last one x kv heads: the work, roughly
  int32_t seq;
  int32_t q_begin;  // the tile's query tokens, relative to the sequence
  int32_t q_end;
  int32_t g_begin;  // the item's kv heads
  int32_t g_end;
};

// Keys staged and attended at once in bf16 (whole cache blocks, at least one): the online
// softmax's per-pass work (max, rescale of the accumulators, a partly filled exp vector) is paid
// once per span rather than once per block, which dominates decode over short contexts with
// small blocks (8 keys). fp32 caches are read in place, one block at a time.
constexpr int64_t kSpanKeys = 128;

inline int64_t span_keys(bool staged, int64_t block_size) {
  return staged ? std::max<int64_t>(1, kSpanKeys / block_size) * block_size : block_size;
}

// rows: query rows of an item at most (tokens x query heads); k and v: one span of keys per kv
// head, head after head.
struct Scratch {
  Scratch(int64_t rows, int64_t group, int64_t kv_heads, int64_t head_dim, int64_t span)
      : q(rows * pad(head_dim)), acc(rows * pad(head_dim)), m(rows), l(rows), alpha(group),
        s(group * pad(span)), k(kv_heads * span * pad(head_dim)), v(kv_heads * span * pad(head_dim)),
        key_offset(span) {}
  std::vector<float> q, acc, m, l, alpha, s, k, v;
  std::vector<int64_t> key_offset;  // attend_bf16.h: a span's keys' rows in the cache
};

LLMAAS_INLINE float to_f32(float x) { return x; }
LLMAAS_INLINE float to_f32(uint16_t x) { return bf16_to_f32(x); }
LLMAAS_INLINE void store(float* dst, float x) { *dst = x; }
LLMAAS_INLINE void store(uint16_t* dst, float x) { *dst = f32_to_bf16(x); }

// The online softmax's step over the scores of n keys (rows of s, s_stride apart, n padded to
// whole vectors) for `rows` rows: updates each row's running max m and sum l, sets alpha (the
// factor its accumulator must be scaled by) and turns the scores into probabilities.
template <typename V>
LLMAAS_INLINE void softmax_rows(int64_t rows, int64_t n, float* __restrict m, float* __restrict l,
                                float* __restrict alpha, float* __restrict s, int64_t s_stride) {
  constexpr int64_t W = kLanesOf<V>;
  // Lanes of s past n hold stale values, possibly NaN: selects (not arithmetic)
  // keep them out of the max and the sum. Loads stay unconditional, else GCC
  // turns the selects into branches. After this, s holds probabilities.
  const V lane = lane_index<V>();
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * s_stride;
    V block_max = V{} - INFINITY;
    for (int64_t j0 = 0; j0 < n; j0 += W) {
      const V x = load_vec<V>(sr + j0);
      const V valid = lane + static_cast<float>(j0) < static_cast<float>(n) ? x : block_max;
      block_max = valid > block_max ? valid : block_max;
    }
    const float m_new = std::max(m[r], reduce_max(block_max));
    // ~0 on the first block, where m = -inf, and acc and l are 0 anyway.
    alpha[r] = exp_nonpositive(V{} + (m[r] - m_new))[0];
    V sum{};
    for (int64_t j0 = 0; j0 < n; j0 += W) {
      const V p = exp_nonpositive(load_vec<V>(sr + j0) - m_new);
      const V p_valid = lane + static_cast<float>(j0) < static_cast<float>(n) ? p : V{};
      store_vec(sr + j0, p_valid);
      sum += p_valid;
    }
    m[r] = m_new;
    l[r] = l[r] * alpha[r] + reduce_add(sum);
  }
}

// Attends `rows` staged query rows (the heads of one token, so they share their
// causal limit) to the first n keys of one block, all visible to them. Each
// phase (scores, softmax, weighted sum) runs over all rows before the next, so
// the out-of-order core overlaps rows instead of waiting on one row's chain of
// dependent steps. Rows of q and acc are dim = chunks vectors of V long, as are
// those of k and v, kv_stride apart; kChunks > 0 makes chunks a constant, so the
// loops over it unroll into registers. s holds s_stride floats per row, n padded
// to whole vectors; alpha one per row.
template <typename V, int64_t kChunks>
LLMAAS_INLINE void attend_block(const float* __restrict q, const float* __restrict k, const float* __restrict v,
                                int64_t rows, int64_t kv_stride, int64_t n, int64_t chunks, float* __restrict m,
                                float* __restrict l, float* __restrict alpha, float* __restrict acc,
                                float* __restrict s, int64_t s_stride) {
  constexpr int64_t W = kLanesOf<V>;
  const int64_t C = kChunks > 0 ? kChunks : chunks, dim = C * W;
  for (int64_t r = 0; r < rows; ++r) {
    const float* qr = q + r * dim;
    for (int64_t j = 0; j < n; ++j) {
      const float* kj = k + j * kv_stride;
      V dot = load_vec<V>(qr) * load_vec<V>(kj);
      for (int64_t c = 1; c < C; ++c) dot += load_vec<V>(qr + c * W) * load_vec<V>(kj + c * W);
      s[r * s_stride + j] = reduce_add(dot);
    }
  }

  softmax_rows<V>(rows, n, m, l, alpha, s, s_stride);

  for (int64_t r = 0; r < rows; ++r) {
    const float* sr = s + r * s_stride;
    float* ar = acc + r * dim;
    if constexpr (kChunks > 0) {
      // Keys alternate between accumulator sets until there are enough
      // independent FMA chains to cover the FMA latency, but not so many
      // registers that they spill.
      constexpr int64_t kSets = kChunks < 8 ? 2 : 1;
      V part[kSets][kChunks];
      for (int64_t c = 0; c < kChunks; ++c) {
        part[0][c] = load_vec<V>(ar + c * W) * alpha[r];
        for (int64_t set = 1; set < kSets; ++set) part[set][c] = V{};
      }
      int64_t j = 0;
      for (; j + kSets <= n; j += kSets)
        for (int64_t set = 0; set < kSets; ++set)
          for (int64_t c = 0; c < kChunks; ++c)
            part[set][c] += sr[j + set] * load_vec<V>(v + (j + set) * kv_stride + c * W);
      for (; j < n; ++j)
        for (int64_t c = 0; c < kChunks; ++c) part[0][c] += sr[j] * load_vec<V>(v + j * kv_stride + c * W);
      for (int64_t c = 0; c < kChunks; ++c) {
        for (int64_t set = 1; set < kSets; ++set) part[0][c] += part[set][c];
        store_vec(ar + c * W, part[0][c]);
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        V out = load_vec<V>(ar + c * W) * alpha[r];
        for (int64_t j = 0; j < n; ++j) out += sr[j] * load_vec<V>(v + j * kv_stride + c * W);
        store_vec(ar + c * W, out);
      }
    }
  }
}

// Copies (widening bf16, scaling) n rows of `dim` elements into rows of padded_dim.
template <typename T>
LLMAAS_INLINE void stage_rows(const T* __restrict src, int64_t src_stride, int64_t n, int64_t dim,
                              int64_t padded_dim, float scale, float* __restrict dst) {
  for (int64_t j = 0; j < n; ++j) {
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) dst[j * padded_dim + d] = to_f32(src[j * src_stride + d]) * scale;
  }
}

// Prefetches the bytes [p, p + n) into the cache, a 64-byte line at a time.
LLMAAS_INLINE void prefetch_bytes(const void* p, int64_t n) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < n; i += 64) __builtin_prefetch(c + i);
}

// kHeadDim > 0 fixes the head dimension at compile time; 0 reads it from the
// arguments (any size, slower).
template <typename V, typename T, int64_t kHeadDim>
LLMAAS_INLINE void attend_item(const PagedAttentionArgs& a, const WorkItem& w, Scratch& sc) {
  constexpr int64_t W = kLanesOf<V>;
  static_assert(kPad % W == 0 && kHeadDim % kPad == 0);
  const int64_t D = kHeadDim > 0 ? kHeadDim : a.head_dim;
  const int64_t Dp = pad(D), chunks = Dp / W;
  const int64_t G = a.num_heads / a.num_kv_heads, bs = a.block_size;
  const int64_t g0 = w.g_begin, heads = w.g_end - w.g_begin;  // kv heads of the item
  const int64_t H = heads * G;                                // query heads of the item
  const int64_t kv_row = a.num_kv_heads * D;  // elements between two positions of a block
  const int64_t q0 = a.query_start_loc[w.seq];
  const int64_t first_pos = a.context_lens[w.seq] - (a.query_start_loc[w.seq + 1] - q0);
  const int64_t tokens = w.q_end - w.q_begin, rows = tokens * H;
  float* __restrict q = sc.q.data();
  float* __restrict acc = sc.acc.data();

  // Row t * H + h is query head g0 * G + h of token t: the rows of a token share a causal limit,
  // and the G rows of one kv head are adjacent.
  const T* query = static_cast<const T*>(a.query);
  for (int64_t t = 0; t < tokens; ++t) {
    const T* src = query + (q0 + w.q_begin + t) * a.q_token_stride + g0 * G * a.q_head_stride;
    stage_rows(src, a.q_head_stride, H, D, Dp, a.scale, q + t * H * Dp);
  }
  std::fill_n(sc.m.data(), rows, -INFINITY);
  std::fill_n(sc.l.data(), rows, 0.0f);
  std::fill_n(acc, rows * Dp, 0.0f);

  const int32_t* table = a.block_tables + w.seq * a.max_blocks_per_seq;
  const int64_t last_pos = first_pos + w.q_end - 1;
  // Keys before the first token's window are no token's: the walk starts at the block holding it.
  const int64_t first_key = window_start(first_pos + w.q_begin, a.sliding_window);
  const bool in_place = std::is_same_v<T, float> && D == Dp;  // fp32 whole vectors: read the cache
  const int64_t span = span_keys(!in_place, bs);
  const int64_t block_elems = bs * kv_row;
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  // The item's part of one position's row, and of a whole block (its rows are contiguous).
  const int64_t row_bytes = heads * D * static_cast<int64_t>(sizeof(T));
  const int64_t item_block_bytes = ((bs - 1) * kv_row + heads * D) * static_cast<int64_t>(sizeof(T));
  for (int64_t k0 = first_key / bs * bs; k0 <= last_pos; k0 += span) {  // spans start on a block
    const int64_t n = std::min(span, last_pos + 1 - k0);
    // The next span's blocks, fetched while this one is staged and attended.
    for (int64_t b0 = k0 + span; b0 < std::min(k0 + 2 * span, last_pos + 1); b0 += bs) {
      const int64_t offset = table[b0 / bs] * block_elems + g0 * D;
      const int64_t bytes = heads == a.num_kv_heads ? item_block_bytes : row_bytes;
      for (int64_t j = 0; j < (heads == a.num_kv_heads ? 1 : bs); ++j) {
        prefetch_bytes(k_cache + offset + j * kv_row, bytes);
        prefetch_bytes(v_cache + offset + j * kv_row, bytes);
      }
    }
    const float *k = sc.k.data(), *v = sc.v.data();
    int64_t kv_stride = Dp, head_stride = span * Dp;  // in k and v, between rows and between heads
    for (int64_t b0 = 0; b0 < n; b0 += bs) {  // the span's blocks, one after the other in scratch
      const int64_t offset = table[(k0 + b0) / bs] * block_elems + g0 * D;
      const T* kb = k_cache + offset;
      const T* vb = v_cache + offset;
      if (in_place) {
        k = reinterpret_cast<const float*>(kb), v = reinterpret_cast<const float*>(vb);
        kv_stride = kv_row, head_stride = D;
      } else {
        const int64_t rows_in_block = std::min(bs, n - b0);
        for (int64_t j = 0; j < rows_in_block; ++j)  // position by position: the block's order in memory
          for (int64_t g = 0; g < heads; ++g) {
            stage_rows(kb + j * kv_row + g * D, kv_row, 1, D, Dp, 1.0f, sc.k.data() + g * head_stride + (b0 + j) * Dp);
            stage_rows(vb + j * kv_row + g * D, kv_row, 1, D, Dp, 1.0f, sc.v.data() + g * head_stride + (b0 + j) * Dp);
          }
      }
    }
    for (int64_t t = 0; t < tokens; ++t) {
      // The token sees the span's keys [skip, skip + n_t): from its window's start to itself.
      const int64_t pos = first_pos + w.q_begin + t;
      const int64_t skip = std::max<int64_t>(0, window_start(pos, a.sliding_window) - k0);
      const int64_t n_t = std::min(n, pos - k0 + 1) - skip;
      if (n_t > 0)
        for (int64_t g = 0; g < heads; ++g) {
          const int64_t r = t * H + g * G;
          const int64_t first = g * head_stride + skip * kv_stride;
          attend_block<V, kHeadDim / W>(q + r * Dp, k + first, v + first, G, kv_stride, n_t, chunks, &sc.m[r],
                                        &sc.l[r], sc.alpha.data(), acc + r * Dp, sc.s.data(), pad(span));
        }
    }
  }

  T* out = static_cast<T*>(a.out);
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = 1.0f / sc.l[r];
    T* dst = out + ((q0 + w.q_begin + r / H) * a.num_heads + g0 * G + r % H) * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) store(dst + d, acc[r * Dp + d] * inv);
  }
}

}  // namespace llmaas::attention
