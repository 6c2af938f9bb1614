// Python bindings of the bf16 linear layer (csrc/cpu/linear_bf16.cpp), added to
// engine._C by csrc/bindings.cpp. Same conventions as the attention bindings:
// tensors cross as `data_ptr()` integers, engine/kernels/linear.py checks shapes
// and dtypes and keeps the tensors alive, arguments are keyword-only, and the
// GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cpu/amx.h"
#include "cpu/linear_bf16.h"
#include "cpu/linear_q4_1.h"

namespace py = pybind11;

namespace {

void pack_linear_weight(uintptr_t weight, uintptr_t packed, int64_t n, int64_t k, int64_t weight_row_stride,
                        int num_threads) {
  py::gil_scoped_release release;
  llmaas::pack_linear_weight(reinterpret_cast<const uint16_t*>(weight), reinterpret_cast<uint16_t*>(packed), n, k,
                             weight_row_stride, num_threads);
}

void pack_linear_weight_q4_1(uintptr_t blocks, uintptr_t packed, int64_t n, int64_t k, int num_threads) {
  py::gil_scoped_release release;
  llmaas::pack_linear_weight_q4_1(reinterpret_cast<const uint8_t*>(blocks), reinterpret_cast<uint8_t*>(packed), n, k,
                                  num_threads);
}

void gather_packed_rows(uintptr_t out, uintptr_t packed, int64_t n, int64_t k, uintptr_t ids, int64_t count,
                        int64_t out_row_stride) {
  py::gil_scoped_release release;
  llmaas::gather_packed_rows(reinterpret_cast<const uint16_t*>(packed), n, k, reinterpret_cast<const int64_t*>(ids),
                             count, reinterpret_cast<uint16_t*>(out), out_row_stride);
}

void linear_bf16(uintptr_t out, uintptr_t x, uintptr_t packed, llmaas::DType out_dtype, int64_t m, int64_t n,
                 int64_t k, int64_t x_row_stride, int64_t out_row_stride, int num_threads, uintptr_t packed_q4_1,
                 uintptr_t bias) {
  const llmaas::LinearArgs args{reinterpret_cast<const uint16_t*>(x), reinterpret_cast<const uint16_t*>(packed),
                                reinterpret_cast<void*>(out), out_dtype, m, n, k, x_row_stride, out_row_stride,
                                num_threads, reinterpret_cast<const uint8_t*>(packed_q4_1),
                                reinterpret_cast<const float*>(bias)};
  py::gil_scoped_release release;
  llmaas::linear_bf16(args);
}

void linear_bf16_grouped(uintptr_t out, uintptr_t x, const std::vector<uintptr_t>& packed,
                         const std::vector<int64_t>& row_starts, llmaas::DType out_dtype, int64_t n, int64_t k,
                         int64_t x_row_stride, int64_t out_row_stride, int num_threads) {
  if (row_starts.size() != packed.size() + 1)
    throw std::invalid_argument("linear_bf16_grouped: row_starts needs one entry more than packed");
  std::vector<const uint16_t*> weights(packed.size());
  for (size_t g = 0; g < packed.size(); ++g) weights[g] = reinterpret_cast<const uint16_t*>(packed[g]);
  const llmaas::GroupedLinearArgs args{reinterpret_cast<const uint16_t*>(x), weights.data(), row_starts.data(),
                                       static_cast<int64_t>(packed.size()), reinterpret_cast<void*>(out), out_dtype,
                                       n, k, x_row_stride, out_row_stride, num_threads};
  py::gil_scoped_release release;
  llmaas::linear_bf16_grouped(args);
}

}  // namespace

void register_linear_ops(py::module_& m) {
  m.attr("LINEAR_TILE_N") = llmaas::kLinearTileN;
  m.def("pack_linear_weight", &pack_linear_weight, py::kw_only(), py::arg("weight"), py::arg("packed"), py::arg("n"),
        py::arg("k"), py::arg("weight_row_stride"), py::arg("num_threads"),
        "Packs a bf16 weight (n, k) for linear_bf16 (see engine/kernels/linear.py).");
  m.def("linear_bf16", &linear_bf16, py::kw_only(), py::arg("out"), py::arg("x"), py::arg("packed"),
        py::arg("out_dtype"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("x_row_stride"),
        py::arg("out_row_stride"), py::arg("num_threads"), py::arg("packed_q4_1") = 0, py::arg("bias") = 0,
        "out = x @ W^T (+ bias, fp32, 0 if none) for bf16 x and a packed bf16 W (and its packed Q4_1 form, 0 if "
        "none).");
  m.def("linear_bf16_grouped", &linear_bf16_grouped, py::kw_only(), py::arg("out"), py::arg("x"), py::arg("packed"),
        py::arg("row_starts"), py::arg("out_dtype"), py::arg("n"), py::arg("k"), py::arg("x_row_stride"),
        py::arg("out_row_stride"), py::arg("num_threads"),
        "out[rows of group g] = x[rows of group g] @ W_g^T for packed bf16 weights of one shape.");
  m.def("gather_packed_rows", &gather_packed_rows, py::kw_only(), py::arg("out"), py::arg("packed"), py::arg("n"),
        py::arg("k"), py::arg("ids"), py::arg("count"), py::arg("out_row_stride"),
        "out[i] = W[ids[i]] from a packed bf16 W (n, k).");
  m.attr("Q4_1_MAX_ROWS") = llmaas::kQ4_1MaxRows;
  m.def("packed_q4_1_bytes", &llmaas::packed_q4_1_bytes, py::kw_only(), py::arg("n"), py::arg("k"),
        "Bytes of a weight (n, k) packed by pack_linear_weight_q4_1.");
  m.def("pack_linear_weight_q4_1", &pack_linear_weight_q4_1, py::kw_only(), py::arg("blocks"), py::arg("packed"),
        py::arg("n"), py::arg("k"), py::arg("num_threads"),
        "Packs a weight's GGUF Q4_1 blocks (n rows of k / 32 blocks) for linear_bf16.");
  m.def("linear_q4_1_available", &llmaas::linear_q4_1_available,
        "Whether the selected linear variant runs the Q4_1 kernel (amx_bf16, avx512_bf16).");
  m.def("supported_linear_isas", &llmaas::supported_linear_isas,
        "Linear kernel variants this CPU can run, best first.");
  m.def("linear_isa", &llmaas::linear_isa, "The linear kernel variant in use.");
#if defined(__x86_64__)
  m.def("load_foreign_amx_config", [] {
        if (!llmaas::cpu_has_amx_bf16()) throw std::invalid_argument("this CPU has no AMX");
        llmaas::amx_load_foreign_config();
      },
      "Configures the calling thread's AMX tiles as other code might leave them (tests).");
#endif
  m.def("set_linear_isa", &llmaas::set_linear_isa, py::arg("isa"),
        "Forces a linear kernel variant (tests, benchmarks).");
}
