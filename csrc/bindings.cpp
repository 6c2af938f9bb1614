// Python bindings of the CPU kernels (module engine._C).
//
// Tensors cross as integers (`tensor.data_ptr()`) plus sizes and strides, so the
// extension does not link libtorch; engine/kernels/ops.py checks shapes and
// dtypes and owns the tensors for the duration of the call. Arguments are
// keyword-only because positional calls with twenty integers invite swaps. The
// GIL is released while a kernel runs so other Python threads keep going.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "cpu/address.h"
#include "cpu/kernels.h"

namespace py = pybind11;

// The bf16 linear layer's bindings (csrc/cpu/linear_bindings.cpp).
void register_linear_ops(pybind11::module_& m);
// RMSNorm with residual and rotary embedding (csrc/cpu/norm_rope_bindings.cpp).
void register_norm_rope_ops(pybind11::module_& m);
// The fused bf16 decoder stack and SiLU-and-multiply (csrc/cpu/decoder_stack_bindings.cpp).
void register_decoder_ops(pybind11::module_& m);
// Random sampling from fp32 logits (csrc/cpu/sampling_bindings.cpp).
void register_sampling_ops(pybind11::module_& m);
using llmaas::DType;

namespace {

using llmaas::ptr;

void paged_attention(uintptr_t out, uintptr_t query, uintptr_t k_cache, uintptr_t v_cache, uintptr_t block_tables,
                     uintptr_t context_lens, uintptr_t query_start_loc, DType dtype, int64_t num_tokens,
                     int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                     int64_t num_blocks, int64_t max_blocks_per_seq, int64_t q_token_stride, int64_t q_head_stride,
                     float scale, int num_threads, int64_t sliding_window) {
  const llmaas::PagedAttentionArgs args{
      ptr<void>(out), ptr<const void>(query), ptr<const void>(k_cache), ptr<const void>(v_cache),
      ptr<const int32_t>(block_tables), ptr<const int32_t>(context_lens), ptr<const int32_t>(query_start_loc),
      dtype, num_tokens, num_seqs, num_heads, num_kv_heads, head_dim, block_size, num_blocks, max_blocks_per_seq,
      q_token_stride, q_head_stride, scale, num_threads, sliding_window};
  py::gil_scoped_release release;
  llmaas::paged_attention(args);
}

void write_kv_cache(uintptr_t key, uintptr_t value, uintptr_t k_cache, uintptr_t v_cache, uintptr_t slot_mapping,
                    int64_t elem_size, int64_t num_tokens, int64_t num_kv_heads, int64_t head_dim, int64_t num_slots,
                    int64_t key_token_stride, int64_t key_head_stride, int64_t value_token_stride,
                    int64_t value_head_stride, int num_threads) {
  const llmaas::WriteKvCacheArgs args{
      ptr<const void>(key), ptr<const void>(value), ptr<void>(k_cache), ptr<void>(v_cache),
      ptr<const int64_t>(slot_mapping), elem_size, num_tokens, num_kv_heads, head_dim, num_slots,
      key_token_stride, key_head_stride, value_token_stride, value_head_stride, num_threads};
  py::gil_scoped_release release;
  llmaas::write_kv_cache(args);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "llmaas CPU kernels (see csrc/cpu/*.cpp for layouts)";

  py::enum_<DType>(m, "DType").value("float32", DType::kFloat32).value("bfloat16", DType::kBFloat16);

  m.def("paged_attention", &paged_attention, py::kw_only(), py::arg("out"), py::arg("query"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("block_tables"), py::arg("context_lens"), py::arg("query_start_loc"),
        py::arg("dtype"), py::arg("num_tokens"), py::arg("num_seqs"), py::arg("num_heads"), py::arg("num_kv_heads"),
        py::arg("head_dim"), py::arg("block_size"), py::arg("num_blocks"), py::arg("max_blocks_per_seq"),
        py::arg("q_token_stride"), py::arg("q_head_stride"), py::arg("scale"), py::arg("num_threads"),
        py::arg("sliding_window"),
        "Causal attention of a mixed batch over the paged KV cache (see engine/kernels/ops.py).");
  m.def("write_kv_cache", &write_kv_cache, py::kw_only(), py::arg("key"), py::arg("value"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("slot_mapping"), py::arg("elem_size"), py::arg("num_tokens"),
        py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("num_slots"), py::arg("key_token_stride"),
        py::arg("key_head_stride"), py::arg("value_token_stride"), py::arg("value_head_stride"),
        py::arg("num_threads"), "Copies new keys and values into their cache slots.");

  m.def("supported_cpu_isas", &llmaas::supported_cpu_isas, "Attention kernel variants this CPU can run, best first.");
  m.def("cpu_isa", &llmaas::cpu_isa, "The attention kernel variant in use.");
  m.def("set_cpu_isa", &llmaas::set_cpu_isa, py::arg("isa"), "Forces an attention kernel variant (tests, benchmarks).");
  register_linear_ops(m);
  register_norm_rope_ops(m);
  register_decoder_ops(m);
  register_sampling_ops(m);
}
