// Writes the new tokens' keys and values into the paged KV cache by slot mapping (CUDA).
//
// Layout: key/value (num_tokens, num_kv_heads, head_dim) with token/head strides in elements
// (views of the fused qkv projection); k_cache/v_cache (num_blocks, block_size, num_kv_heads,
// head_dim) contiguous, so slot s starts at element s * num_kv_heads * head_dim; slot_mapping
// (num_tokens,) int64, negative = skip (rows that pad a CUDA-graph batch).
//
// Design: a pure copy, dtype-agnostic: one block per token, threads stride over the token's
// kv_heads x head_dim elements in copy units of 16 bytes where sizes, strides and pointers allow
// (the usual case: head_dim * elem_size a multiple of 16), else one element at a time.
// Reference: engine/kernels/reference.py write_kv_cache; test: tests/kernels/test_cuda_kernels.py.
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "kernels.h"

namespace llmaas_cuda {
namespace {

// All sizes and strides in copy units.
template <typename Unit>
__global__ void write_kernel(const Unit* __restrict__ key, const Unit* __restrict__ value, Unit* __restrict__ k_cache,
                             Unit* __restrict__ v_cache, const int64_t* __restrict__ slot_mapping, int num_kv_heads,
                             int head_units, int64_t key_token_stride, int64_t key_head_stride,
                             int64_t value_token_stride, int64_t value_head_stride) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  if (slot < 0) return;
  const int n = num_kv_heads * head_units;
  const int64_t dst = slot * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int h = i / head_units, d = i % head_units;
    k_cache[dst + i] = key[token * key_token_stride + h * key_head_stride + d];
    v_cache[dst + i] = value[token * value_token_stride + h * value_head_stride + d];
  }
}

template <typename Unit>
std::string launch(const WriteKvCacheArgs& a, int64_t per_unit) {
  const int head_units = static_cast<int>(a.head_dim / per_unit);
  const int threads = static_cast<int>(std::min<int64_t>(256, ((a.num_kv_heads * head_units + 31) / 32) * 32));
  write_kernel<Unit><<<static_cast<unsigned>(a.num_tokens), threads, 0, reinterpret_cast<cudaStream_t>(a.stream)>>>(
      static_cast<const Unit*>(a.key), static_cast<const Unit*>(a.value), static_cast<Unit*>(a.k_cache),
      static_cast<Unit*>(a.v_cache), a.slot_mapping, static_cast<int>(a.num_kv_heads), head_units,
      a.key_token_stride / per_unit, a.key_head_stride / per_unit, a.value_token_stride / per_unit,
      a.value_head_stride / per_unit);
  return launch_error("write_kv_cache");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

std::string write_kv_cache(const WriteKvCacheArgs& a) {
  if (a.elem_size != 2 && a.elem_size != 4) return "write_kv_cache: elem_size must be 2 or 4";
  if (a.num_tokens == 0) return {};
  const int64_t per_unit = 16 / a.elem_size;  // elements per 16-byte unit
  const bool vectorised = a.head_dim % per_unit == 0 && a.key_token_stride % per_unit == 0 &&
                          a.key_head_stride % per_unit == 0 && a.value_token_stride % per_unit == 0 &&
                          a.value_head_stride % per_unit == 0 && aligned16(a.key) && aligned16(a.value) &&
                          aligned16(a.k_cache) && aligned16(a.v_cache);
  if (vectorised) return launch<uint4>(a, per_unit);
  return a.elem_size == 2 ? launch<uint16_t>(a, 1) : launch<uint32_t>(a, 1);
}

}  // namespace llmaas_cuda
