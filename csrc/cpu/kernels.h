// Entry points of the CPU kernels, shared by their sources and the bindings.
//
// The kernels receive raw pointers (Python passes `tensor.data_ptr()`) plus
// sizes and strides, so the extension does not depend on libtorch. They
// validate the data-dependent invariants (lengths, block ids, slots) before any
// thread touches memory and throw std::invalid_argument, which pybind11 turns
// into ValueError.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llmaas {

enum class DType { kFloat32, kBFloat16 };

struct PagedAttentionArgs {
  void* out;                // (num_tokens, num_heads, head_dim), contiguous
  const void* query;        // (num_tokens, num_heads, head_dim), strided, unit last stride
  const void* k_cache;      // (num_blocks, block_size, num_kv_heads, head_dim), contiguous
  const void* v_cache;      // same layout as k_cache
  const int32_t* block_tables;     // (num_seqs, max_blocks_per_seq)
  const int32_t* context_lens;     // (num_seqs,)
  const int32_t* query_start_loc;  // (num_seqs + 1,)
  DType dtype;
  int64_t num_tokens, num_seqs, num_heads, num_kv_heads, head_dim;
  int64_t block_size, num_blocks, max_blocks_per_seq;
  int64_t q_token_stride, q_head_stride;  // in elements
  float scale;
  int num_threads;
  // W > 0: the query at position p sees only keys p - W + 1 .. p (local attention); 0: all up
  // to p. Last, with a default, so callers without a window (decoder_stack.cpp) leave it out.
  int64_t sliding_window = 0;
};

struct WriteKvCacheArgs {
  const void* key;          // (num_tokens, num_kv_heads, head_dim), strided, unit last stride
  const void* value;        // same shape as key, its own strides
  void* k_cache;            // (num_blocks, block_size, num_kv_heads, head_dim), contiguous
  void* v_cache;            // same layout as k_cache
  const int64_t* slot_mapping;  // (num_tokens,)
  int64_t elem_size;        // bytes; the copy is dtype-agnostic
  int64_t num_tokens, num_kv_heads, head_dim, num_slots;
  int64_t key_token_stride, key_head_stride;      // in elements
  int64_t value_token_stride, value_head_stride;  // in elements
  int num_threads;
};

void paged_attention(const PagedAttentionArgs& args);
void write_kv_cache(const WriteKvCacheArgs& args);

// Instruction-set variant of the attention kernel ("avx512", "avx2",
// "baseline"): the best the CPU supports is chosen at load time; tests force
// each supported one in turn.
std::vector<std::string> supported_cpu_isas();
std::string cpu_isa();
void set_cpu_isa(const std::string& isa);

}  // namespace llmaas
