// Python bindings of the CUDA kernels: the module engine._C_cuda, built only with CUDA
// (CMakeLists.txt, LLMAAS_WITH_CUDA). A module of its own rather than part of engine._C, so the
// CPU extension never links the CUDA runtime and its bindings stay untouched by this build switch.
// Pointers and the stream cross as integers; engine/kernels/cuda_ops.py checks shapes and dtypes.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "kernels.h"

namespace py = pybind11;
using llmaas_cuda::DType;

namespace {

void raise_if(const std::string& error) {
  if (!error.empty()) throw std::runtime_error(error);
}

void decode_attention(uintptr_t out, uintptr_t partials, uintptr_t query, uintptr_t k_cache, uintptr_t v_cache,
                      uintptr_t block_tables, uintptr_t context_lens, DType dtype, int64_t num_seqs, int64_t num_heads,
                      int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int64_t max_blocks_per_seq,
                      int64_t q_token_stride, int64_t q_head_stride, int64_t num_splits, int64_t partition,
                      int64_t sliding_window, float scale, uintptr_t stream) {
  const llmaas_cuda::DecodeAttentionArgs args{
      reinterpret_cast<void*>(out), reinterpret_cast<float*>(partials), reinterpret_cast<const void*>(query),
      reinterpret_cast<const void*>(k_cache), reinterpret_cast<const void*>(v_cache),
      reinterpret_cast<const int32_t*>(block_tables), reinterpret_cast<const int32_t*>(context_lens), dtype,
      num_seqs, num_heads, num_kv_heads, head_dim, block_size, max_blocks_per_seq, q_token_stride, q_head_stride,
      num_splits, partition, sliding_window, scale, stream};
  raise_if(llmaas_cuda::decode_attention(args));
}

void write_kv_cache(uintptr_t key, uintptr_t value, uintptr_t k_cache, uintptr_t v_cache, uintptr_t slot_mapping,
                    int64_t elem_size, int64_t num_tokens, int64_t num_kv_heads, int64_t head_dim,
                    int64_t key_token_stride, int64_t key_head_stride, int64_t value_token_stride,
                    int64_t value_head_stride, uintptr_t stream) {
  const llmaas_cuda::WriteKvCacheArgs args{
      reinterpret_cast<const void*>(key), reinterpret_cast<const void*>(value), reinterpret_cast<void*>(k_cache),
      reinterpret_cast<void*>(v_cache), reinterpret_cast<const int64_t*>(slot_mapping), elem_size, num_tokens,
      num_kv_heads, head_dim, key_token_stride, key_head_stride, value_token_stride, value_head_stride, stream};
  raise_if(llmaas_cuda::write_kv_cache(args));
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "llmaas CUDA kernels (see csrc/cuda/*.cu for layouts)";
  py::enum_<DType>(m, "DType")
      .value("float32", DType::kFloat32)
      .value("float16", DType::kFloat16)
      .value("bfloat16", DType::kBFloat16);
  m.def("decode_attention", &decode_attention, py::kw_only(), py::arg("out"), py::arg("partials"), py::arg("query"),
        py::arg("k_cache"), py::arg("v_cache"), py::arg("block_tables"), py::arg("context_lens"), py::arg("dtype"),
        py::arg("num_seqs"), py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
        py::arg("block_size"), py::arg("max_blocks_per_seq"), py::arg("q_token_stride"), py::arg("q_head_stride"),
        py::arg("num_splits"), py::arg("partition"), py::arg("sliding_window"), py::arg("scale"), py::arg("stream"),
        "Paged-attention decode, one query token per sequence, launched on `stream`.");
  m.def("write_kv_cache", &write_kv_cache, py::kw_only(), py::arg("key"), py::arg("value"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("slot_mapping"), py::arg("elem_size"), py::arg("num_tokens"),
        py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("key_token_stride"), py::arg("key_head_stride"),
        py::arg("value_token_stride"), py::arg("value_head_stride"), py::arg("stream"),
        "Copies new keys and values into their cache slots (negative slots skipped), on `stream`.");
}
