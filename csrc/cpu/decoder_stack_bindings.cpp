// Python bindings of the fused decoder stack and SiLU-and-multiply (csrc/cpu/decoder_stack.cpp,
// csrc/cpu/activation.cpp), added to engine._C by csrc/bindings.cpp. Same conventions as the other
// kernels: tensors cross as `data_ptr()` integers, engine/kernels/decoder_stack.py checks shapes
// and dtypes and keeps the tensors alive, arguments are keyword-only, the GIL is released.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/address.h"
#include "cpu/decoder_stack.h"

namespace py = pybind11;

namespace {

using llmaas::ptr;

void decoder_stack(uintptr_t out, uintptr_t layers, int64_t num_layers, uintptr_t embed, int64_t vocab_size,
                   uintptr_t final_norm, uintptr_t cos_table, uintptr_t sin_table, int64_t max_positions,
                   uintptr_t input_ids, uintptr_t positions, int64_t num_tokens, uintptr_t slot_mapping,
                   uintptr_t block_tables, uintptr_t context_lens, uintptr_t query_start_loc, int64_t num_seqs,
                   int64_t max_blocks_per_seq, int64_t num_blocks, int64_t block_size, int64_t hidden,
                   int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t intermediate, float eps,
                   float scale, int num_threads, bool embed_packed, float embed_scale, float residual_scale,
                   int64_t sliding_window, int64_t num_experts, int64_t top_k, int64_t moe_intermediate,
                   bool renormalize) {
  const llmaas::DecoderStackArgs args{
      ptr<const llmaas::DecoderLayerPtrs>(layers), num_layers, ptr<const uint16_t>(embed), vocab_size,
      ptr<const uint16_t>(final_norm), ptr<const float>(cos_table), ptr<const float>(sin_table), max_positions,
      ptr<const int64_t>(input_ids), ptr<const int64_t>(positions), num_tokens, ptr<const int64_t>(slot_mapping),
      ptr<const int32_t>(block_tables), ptr<const int32_t>(context_lens), ptr<const int32_t>(query_start_loc),
      num_seqs, max_blocks_per_seq, num_blocks, block_size, hidden, num_heads, num_kv_heads, head_dim,
      intermediate, eps, scale, ptr<uint16_t>(out), num_threads, embed_packed, embed_scale, residual_scale,
      sliding_window, num_experts, top_k, moe_intermediate, renormalize};
  py::gil_scoped_release release;
  llmaas::decoder_stack(args);
}

void silu_and_mul(uintptr_t out, uintptr_t gate_up, int64_t rows, int64_t n, int64_t gate_up_row_stride,
                  int num_threads) {
  py::gil_scoped_release release;
  llmaas::silu_and_mul_bf16(ptr<const uint16_t>(gate_up), ptr<uint16_t>(out), rows, n, gate_up_row_stride,
                            num_threads);
}

}  // namespace

void register_decoder_ops(py::module_& m) {
  m.def("decoder_stack", &decoder_stack, py::kw_only(), py::arg("out"), py::arg("layers"), py::arg("num_layers"),
        py::arg("embed"), py::arg("vocab_size"), py::arg("final_norm"), py::arg("cos_table"), py::arg("sin_table"),
        py::arg("max_positions"), py::arg("input_ids"), py::arg("positions"), py::arg("num_tokens"),
        py::arg("slot_mapping"), py::arg("block_tables"), py::arg("context_lens"), py::arg("query_start_loc"),
        py::arg("num_seqs"), py::arg("max_blocks_per_seq"), py::arg("num_blocks"), py::arg("block_size"),
        py::arg("hidden"), py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
        py::arg("intermediate"), py::arg("eps"), py::arg("scale"), py::arg("num_threads"), py::arg("embed_packed") = false,
        py::arg("embed_scale") = 1.0f, py::arg("residual_scale") = 1.0f, py::arg("sliding_window") = 0,
        py::arg("num_experts") = 0, py::arg("top_k") = 0, py::arg("moe_intermediate") = 0,
        py::arg("renormalize") = true,
        "A bf16 Llama decoder stack, embedding to final norm, in one call (see engine/kernels/decoder_stack.py).");
  m.def("silu_and_mul_bf16", &silu_and_mul, py::kw_only(), py::arg("out"), py::arg("gate_up"), py::arg("rows"),
        py::arg("n"), py::arg("gate_up_row_stride"), py::arg("num_threads"),
        "out = bf16(silu(gate)) * up for bf16 rows gate | up (see engine/kernels/decoder_stack.py).");
}
