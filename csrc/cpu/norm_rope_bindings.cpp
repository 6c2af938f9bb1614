// Python bindings of RMSNorm-with-residual and rotary embedding (csrc/cpu/norm_rope.cpp),
// added to engine._C by csrc/bindings.cpp. Same conventions as the other kernels:
// tensors cross as `data_ptr()` integers, engine/kernels/norm_rope.py checks
// shapes and dtypes and keeps the tensors alive, arguments are keyword-only, and
// the GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/address.h"
#include "cpu/kernels.h"
#include "cpu/norm_rope.h"

namespace py = pybind11;

namespace {

using llmaas::ptr;

void fused_add_rms_norm(uintptr_t out, uintptr_t residual_out, uintptr_t x, uintptr_t residual, uintptr_t weight,
                        llmaas::DType dtype, int64_t rows, int64_t cols, int64_t x_row_stride,
                        int64_t residual_row_stride, float eps, int num_threads) {
  py::gil_scoped_release release;
  llmaas::fused_add_rms_norm(ptr<const void>(x), ptr<const void>(residual), ptr<const void>(weight), ptr<void>(out),
                             ptr<void>(residual_out), dtype == llmaas::DType::kBFloat16, rows, cols, x_row_stride,
                             residual_row_stride, eps, num_threads);
}

void rotary(uintptr_t q, uintptr_t k, uintptr_t cos, uintptr_t sin, llmaas::DType dtype, int64_t num_tokens,
            int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t q_token_stride, int64_t q_head_stride,
            int64_t k_token_stride, int64_t k_head_stride, int64_t cos_token_stride, int64_t sin_token_stride,
            bool torch_rounding, int num_threads) {
  py::gil_scoped_release release;
  llmaas::rotary(ptr<void>(q), ptr<void>(k), ptr<const void>(cos), ptr<const void>(sin),
                 dtype == llmaas::DType::kBFloat16, num_tokens, num_heads, num_kv_heads, head_dim, q_token_stride,
                 q_head_stride, k_token_stride, k_head_stride, cos_token_stride, sin_token_stride, torch_rounding,
                 num_threads);
}

}  // namespace

void register_norm_rope_ops(py::module_& m) {
  m.def("fused_add_rms_norm", &fused_add_rms_norm, py::kw_only(), py::arg("out"), py::arg("residual_out"),
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("dtype"), py::arg("rows"), py::arg("cols"),
        py::arg("x_row_stride"), py::arg("residual_row_stride"), py::arg("eps"), py::arg("num_threads"),
        "out = weight * rms_norm(x + residual); residual_out = x + residual (residual 0: none). "
        "See engine/kernels/norm_rope.py.");
  m.def("rotary", &rotary, py::kw_only(), py::arg("q"), py::arg("k"), py::arg("cos"), py::arg("sin"),
        py::arg("dtype"), py::arg("num_tokens"), py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
        py::arg("q_token_stride"), py::arg("q_head_stride"), py::arg("k_token_stride"), py::arg("k_head_stride"),
        py::arg("cos_token_stride"), py::arg("sin_token_stride"), py::arg("torch_rounding"),
        py::arg("num_threads"),
        "Rotate-half rotary embedding applied in place to q and k. See engine/kernels/norm_rope.py.");
}
