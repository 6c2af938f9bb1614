// Python binding of CPU sampling (csrc/cpu/sampling.cpp), added to engine._C by
// csrc/bindings.cpp; engine/kernels/sampling.py checks the tensors and keeps them alive.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/address.h"
#include "cpu/sampling.h"

namespace py = pybind11;

namespace {

using llmaas::ptr;

void sample_rows(uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride, uintptr_t temperature,
                 uintptr_t top_k, uintptr_t top_p, uintptr_t min_p, uintptr_t uniforms, uintptr_t out,
                 int num_threads) {
  const llmaas::SampleArgs args{ptr<const float>(logits), rows, vocab, row_stride, ptr<const float>(temperature),
                                ptr<const int64_t>(top_k), ptr<const float>(top_p), ptr<const float>(min_p),
                                ptr<const double>(uniforms), ptr<int64_t>(out), num_threads};
  py::gil_scoped_release release;
  llmaas::sample_rows(args);
}

void argmax_rows(uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride, uintptr_t out, int num_threads) {
  py::gil_scoped_release release;
  llmaas::argmax_rows(ptr<const float>(logits), rows, vocab, row_stride, ptr<int64_t>(out), num_threads);
}

}  // namespace

void register_sampling_ops(py::module_& m) {
  m.def("sample_rows", &sample_rows, py::kw_only(), py::arg("logits"), py::arg("rows"), py::arg("vocab"),
        py::arg("row_stride"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
        py::arg("uniforms"), py::arg("out"), py::arg("num_threads"),
        "One token per row drawn from fp32 logits (temperature, top-k, top-p, min-p; 0 pointers: off). "
        "See engine/kernels/sampling.py.");
  m.def("argmax_rows", &argmax_rows, py::kw_only(), py::arg("logits"), py::arg("rows"), py::arg("vocab"),
        py::arg("row_stride"), py::arg("out"), py::arg("num_threads"),
        "Each row's first index of its largest value (NaN the largest), as torch.argmax.");
}
