// The Llama decoder stack of a bf16 model in one call: embedding, every layer, final norm.
//
// Per layer, on num_tokens (T) rows, exactly the ops of engine/models/llama.py's per-op path
// and through the same kernels, so results are the same bit for bit but for silu (activation.cpp):
//   h, residual = rms_norm(x + residual)          (layer 0: residual = the embeddings, no add)
//   qkv = h @ Wqkv^T (+ bias, in fp32 before the rounding);  q, k = rms_norm(each head) (Qwen3);  rotary(q, k) in place
//   write k, v into the paged cache;  attn = paged_attention(q);  x = attn @ Wo^T (* residual_scale)
//   h, residual = rms_norm(x + residual)
//   x = (silu(gate) * up) @ Wdown^T (* residual_scale)  where gate | up = h @ Wgate_up^T
//     (a mixture-of-experts layer: x = moe_block(h), engine/models/moe.py's, see moe_block.h)
// then out = rms_norm(x + residual). The residual is updated in place (norm_rope.cpp reads each
// element before writing it). Activations live in one workspace allocated per call (no zeroing:
// every element is written before it is read). Each kernel still decides its own threading.
#include "decoder_stack.h"

#include <cstring>
#include <memory>
#include <stdexcept>

#include "bf16.h"
#include "kernels.h"
#include "linear_bf16.h"
#include "moe_block.h"
#include "norm_rope.h"

namespace llmaas {
namespace {

void linear(const uint16_t* x, const uint16_t* w, const uint8_t* w_q4_1, uint16_t* y, int64_t m, int64_t n, int64_t k,
            int threads, const float* bias = nullptr) {
  linear_bf16(LinearArgs{x, w, y, DType::kBFloat16, m, n, k, k, n, threads, w_q4_1, bias});
}

// x = bf16(float(x) * scale), n elements: torch's bf16 tensor times a Python float.
void scale_bf16(uint16_t* x, int64_t n, float scale) {
  for (int64_t i = 0; i < n; ++i) x[i] = f32_to_bf16(bf16_to_f32(x[i]) * scale);
}


// Qwen3: RMSNorm of each head of q and of k, in place in the qkv rows, token by token (a token's
// heads are contiguous rows of D; the norm reads each element before writing it).
void head_norms(uint16_t* qkv, const uint16_t* q_norm, const uint16_t* k_norm, int64_t T, int64_t num_heads,
                int64_t num_kv_heads, int64_t D, int64_t qkv_n, float eps, int threads) {
  for (int64_t t = 0; t < T; ++t) {
    uint16_t* q = qkv + t * qkv_n;
    uint16_t* k = q + num_heads * D;
    fused_add_rms_norm(q, nullptr, q_norm, q, nullptr, true, num_heads, D, D, D, eps, threads);
    fused_add_rms_norm(k, nullptr, k_norm, k, nullptr, true, num_kv_heads, D, D, D, eps, threads);
  }
}

void check(const DecoderStackArgs& a) {
  if (a.num_layers < 1 || a.num_tokens < 1 || a.hidden < 1 || a.num_kv_heads < 1 || a.head_dim < 2 ||
      a.head_dim % 2 || a.num_heads % a.num_kv_heads || a.intermediate < 1 || a.block_size < 1 || a.num_seqs < 1)
    throw std::invalid_argument("decoder_stack: invalid sizes");
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    if (a.input_ids[t] < 0 || a.input_ids[t] >= a.vocab_size)
      throw std::invalid_argument("decoder_stack: token id out of range of the vocabulary");
    if (a.positions[t] < 0 || a.positions[t] >= a.max_positions)
      throw std::invalid_argument("decoder_stack: position beyond the rotary table");
  }
}

}  // namespace

void decoder_stack(const DecoderStackArgs& a) {
  check(a);
  const int64_t T = a.num_tokens, H = a.hidden, D = a.head_dim, I = a.intermediate;
  const int64_t q_size = a.num_heads * D, kv_size = a.num_kv_heads * D, qkv_n = q_size + 2 * kv_size;
  const int th = a.num_threads;

  // Workspace: residual, norm output, layer output, qkv, attention output, gate_up, activation, cos, sin.
  const int64_t total = T * (3 * H + qkv_n + q_size + 3 * I + 2 * D);
  const std::unique_ptr<uint16_t[]> workspace(new uint16_t[total]);
  uint16_t* residual = workspace.get();
  uint16_t* h = residual + T * H;
  uint16_t* x = h + T * H;
  uint16_t* qkv = x + T * H;
  uint16_t* attn = qkv + T * qkv_n;
  uint16_t* gate_up = attn + T * q_size;
  uint16_t* act = gate_up + T * 2 * I;
  uint16_t* cos = act + T * I;
  uint16_t* sin = cos + T * D;

  if (a.embed_packed) gather_packed_rows(a.embed, a.vocab_size, H, a.input_ids, T, residual, H);
  for (int64_t t = 0; t < T; ++t) {
    if (!a.embed_packed) std::memcpy(residual + t * H, a.embed + a.input_ids[t] * H, H * sizeof(uint16_t));
    const float* c = a.cos_table + a.positions[t] * D;
    const float* s = a.sin_table + a.positions[t] * D;
    for (int64_t d = 0; d < D; ++d) cos[t * D + d] = f32_to_bf16(c[d]), sin[t * D + d] = f32_to_bf16(s[d]);
  }
  if (a.embed_scale != 1.0f) scale_bf16(residual, T * H, a.embed_scale);

  WriteKvCacheArgs write{qkv + q_size, qkv + q_size + kv_size, nullptr, nullptr, a.slot_mapping,
                         sizeof(uint16_t), T, a.num_kv_heads, D, a.num_blocks * a.block_size,
                         qkv_n, D, qkv_n, D, th};
  PagedAttentionArgs attend{attn, qkv, nullptr, nullptr, a.block_tables, a.context_lens, a.query_start_loc,
                            DType::kBFloat16, T, a.num_seqs, a.num_heads, a.num_kv_heads, D, a.block_size,
                            a.num_blocks, a.max_blocks_per_seq, qkv_n, D, a.scale, th};
  attend.sliding_window = a.sliding_window;

  for (int64_t l = 0; l < a.num_layers; ++l) {
    const DecoderLayerPtrs& p = a.layers[l];
    if (l == 0)
      fused_add_rms_norm(residual, nullptr, p.input_norm, h, nullptr, true, T, H, H, H, a.eps, th);
    else
      fused_add_rms_norm(x, residual, p.input_norm, h, residual, true, T, H, H, H, a.eps, th);
    linear(h, p.qkv, p.qkv_q4_1, qkv, T, qkv_n, H, th, p.qkv_bias);
    if (p.q_norm != nullptr) head_norms(qkv, p.q_norm, p.k_norm, T, a.num_heads, a.num_kv_heads, D, qkv_n, a.eps, th);
    rotary(qkv, qkv + q_size, cos, sin, true, T, a.num_heads, a.num_kv_heads, D, qkv_n, D, qkv_n, D, D, D, true, th);
    write.k_cache = p.k_cache, write.v_cache = p.v_cache;
    write_kv_cache(write);
    attend.k_cache = p.k_cache, attend.v_cache = p.v_cache;
    paged_attention(attend);
    linear(attn, p.o_proj, p.o_proj_q4_1, x, T, H, q_size, th);
    if (a.residual_scale != 1.0f) scale_bf16(x, T * H, a.residual_scale);
    fused_add_rms_norm(x, residual, p.post_norm, h, residual, true, T, H, H, H, a.eps, th);
    if (p.router != nullptr) {
      moe_block(h, x, T, H, MoeShape{a.num_experts, a.top_k, a.moe_intermediate, a.renormalize},
                MoeWeights{p.router, p.expert_gate_up, p.expert_down}, th);
    } else {
      linear(h, p.gate_up, p.gate_up_q4_1, gate_up, T, 2 * I, H, th);
      silu_and_mul_bf16(gate_up, act, T, I, 2 * I, th);
      linear(act, p.down, p.down_q4_1, x, T, H, I, th);
    }
    if (a.residual_scale != 1.0f) scale_bf16(x, T * H, a.residual_scale);
  }
  fused_add_rms_norm(x, residual, a.final_norm, a.out, residual, true, T, H, H, H, a.eps, th);
}

}  // namespace llmaas
