// Host entry points of the CUDA kernels (csrc/cuda/*.cu), callable from plain C++ (no CUDA
// headers): device pointers and the stream cross as integers from Python
// (`tensor.data_ptr()`, `torch.cuda.current_stream().cuda_stream`), so nothing links libtorch.
// Each function launches on the given stream, does not synchronise, and returns an error
// message, empty on success (a bad argument, or the launch error CUDA reported).
#pragma once

#include <cstdint>
#include <string>

namespace llmaas_cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct DecodeAttentionArgs {
  void* out;                  // (num_seqs, num_heads, head_dim) contiguous, query's dtype
  float* partials;            // num_splits > 1: (num_seqs, num_heads, num_splits, head_dim + 2) fp32 scratch
  const void* query;          // (num_seqs, num_heads, head_dim), unit last stride
  const void* k_cache;        // (num_blocks, block_size, num_kv_heads, head_dim) contiguous
  const void* v_cache;
  const int32_t* block_tables;  // (num_seqs, max_blocks_per_seq)
  const int32_t* context_lens;  // (num_seqs,)
  DType dtype;
  int64_t num_seqs, num_heads, num_kv_heads, head_dim, block_size, max_blocks_per_seq;
  int64_t q_token_stride, q_head_stride;  // in elements
  int64_t num_splits, partition;          // partition: tokens per split (num_splits * partition >= keys attended)
  int64_t sliding_window;                 // W > 0: the query at ctx - 1 sees only keys ctx - W .. ctx - 1; 0: all
  float scale;
  uintptr_t stream;  // cudaStream_t
};

struct WriteKvCacheArgs {
  const void* key;    // (num_tokens, num_kv_heads, head_dim), unit last stride
  const void* value;
  void* k_cache;      // (num_blocks, block_size, num_kv_heads, head_dim) contiguous
  void* v_cache;
  const int64_t* slot_mapping;  // (num_tokens,): negative slots are skipped (graph padding)
  int64_t elem_size, num_tokens, num_kv_heads, head_dim;
  int64_t key_token_stride, key_head_stride, value_token_stride, value_head_stride;  // in elements
  uintptr_t stream;
};

std::string decode_attention(const DecodeAttentionArgs& args);
std::string write_kv_cache(const WriteKvCacheArgs& args);

}  // namespace llmaas_cuda
