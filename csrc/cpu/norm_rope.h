// Entry points of RMSNorm-with-residual and rotary embedding (csrc/cpu/norm_rope.cpp), shared by
// their bindings and by the fused decoder stack (csrc/cpu/decoder_stack.cpp).
#pragma once

#include <cstdint>

namespace llmaas {

void fused_add_rms_norm(const void* in, const void* residual, const void* weight, void* out, void* residual_out,
                        bool bf16, int64_t rows, int64_t cols, int64_t in_stride, int64_t residual_stride,
                        float eps, int num_threads);
void rotary(void* q, void* k, const void* cos, const void* sin, bool bf16, int64_t num_tokens, int64_t num_heads,
            int64_t num_kv_heads, int64_t head_dim, int64_t q_token_stride, int64_t q_head_stride,
            int64_t k_token_stride, int64_t k_head_stride, int64_t cos_stride, int64_t sin_stride,
            bool torch_rounding, int num_threads);

}  // namespace llmaas
