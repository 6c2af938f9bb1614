// Writes the new tokens' keys and values into the paged KV cache.
//
// Data layout
//   key, value  (num_tokens, Hkv, D), strided (views of the fused qkv projection),
//               unit last stride.
//   k/v cache   (num_blocks, block_size, Hkv, D), contiguous, seen here as
//               num_slots = num_blocks * block_size rows of Hkv * D elements.
//   slot_mapping[t] = block_id * block_size + offset_in_block, the cache row of token t.
//
// Design
//   A pure copy of D elements per (token, kv head), so it works on bytes and does
//   not care about the dtype. Slots are checked before any write because a bad one
//   would corrupt the heap. A decode step writes a few KiB, less than what waking
//   the thread team costs, so only large writes (prefill) run in parallel.
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "kernels.h"

namespace llmaas {

namespace {
constexpr int64_t kParallelBytes = 1 << 20;
}

void write_kv_cache(const WriteKvCacheArgs& a) {
  for (int64_t t = 0; t < a.num_tokens; ++t)
    if (a.slot_mapping[t] < 0 || a.slot_mapping[t] >= a.num_slots)
      throw std::invalid_argument("slot_mapping entry out of range of the cache");

  const int64_t es = a.elem_size, row_bytes = a.head_dim * es;
  const auto* key = static_cast<const char*>(a.key);
  const auto* value = static_cast<const char*>(a.value);
  auto* k_cache = static_cast<char*>(a.k_cache);
  auto* v_cache = static_cast<char*>(a.v_cache);
  const bool parallel = 2 * a.num_tokens * a.num_kv_heads * row_bytes >= kParallelBytes;
#pragma omp parallel for num_threads(a.num_threads) if (parallel) schedule(static)
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const int64_t slot = a.slot_mapping[t];
    for (int64_t h = 0; h < a.num_kv_heads; ++h) {
      const int64_t dst = (slot * a.num_kv_heads + h) * row_bytes;
      std::memcpy(k_cache + dst, key + (t * a.key_token_stride + h * a.key_head_stride) * es, row_bytes);
      std::memcpy(v_cache + dst, value + (t * a.value_token_stride + h * a.value_head_stride) * es, row_bytes);
    }
  }
}

}  // namespace llmaas
