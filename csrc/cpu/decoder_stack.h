// The whole Llama decoder stack of a bf16 model in one call (csrc/cpu/decoder_stack.cpp).
//
// Why: a decode step of a small model (SmolLM2-135M: 30 layers, hidden 576) spends about as much
// time in per-op Python dispatch (~15 torch ops and wrapper calls a layer) as in streaming the
// weights. This entry point runs embedding, every layer and the final norm from C++, calling the
// same kernels the per-op path calls, so one Python call replaces ~450.
#pragma once

#include <cstdint>

namespace llmaas {

// One layer's weights and caches: a row of the int64 table that engine/kernels/decoder_stack.py
// builds (its column order is this member order).
struct DecoderLayerPtrs {
  const uint16_t* input_norm;  // (hidden,)
  const uint16_t* qkv;         // packed (q_size + 2 * kv_size, hidden), see linear_bf16.h
  const uint16_t* o_proj;      // packed (hidden, q_size)
  const uint16_t* post_norm;   // (hidden,)
  const uint16_t* gate_up;     // packed (2 * intermediate, hidden): gate rows, then up rows
  const uint16_t* down;        // packed (hidden, intermediate)
  uint16_t* k_cache;           // (num_blocks, block_size, num_kv_heads, head_dim), contiguous
  uint16_t* v_cache;
  // The four linears' Q4_1 forms (linear_q4_1.h), each null where the weight has none.
  const uint8_t* qkv_q4_1;
  const uint8_t* o_proj_q4_1;
  const uint8_t* gate_up_q4_1;
  const uint8_t* down_q4_1;
  // The variants' extra weights, each null where the model has none: Qwen2's q/k/v biases
  // (q_size + 2 * kv_size,) in fp32 (the bf16 ones widened, added in the linear's store before it
  // rounds), Qwen3's per-head norms of q and of k (head_dim,).
  const float* qkv_bias;
  const uint16_t* q_norm;
  const uint16_t* k_norm;
  // A mixture-of-experts layer's (moe_block.h), null in a dense layer: its router, packed (E, hidden),
  // and arrays of its E experts' packed gate_up (2 * moe_intermediate, hidden) and down; gate_up and
  // down above are then null.
  const uint16_t* router;
  const uint16_t* const* expert_gate_up;
  const uint16_t* const* expert_down;
};
static_assert(sizeof(DecoderLayerPtrs) == 18 * sizeof(int64_t), "a table row is 18 int64 pointers");

struct DecoderStackArgs {
  const DecoderLayerPtrs* layers;
  int64_t num_layers;
  const uint16_t* embed;  // (vocab_size, hidden), or packed (see embed_packed)
  int64_t vocab_size;
  const uint16_t* final_norm;                   // (hidden,)
  const float* cos_table;                       // (max_positions, head_dim) fp32, rounded to bf16 when read
  const float* sin_table;                       // same
  int64_t max_positions;
  const int64_t* input_ids;                     // (num_tokens,)
  const int64_t* positions;                     // (num_tokens,)
  int64_t num_tokens;
  const int64_t* slot_mapping;                  // (num_tokens,)
  const int32_t* block_tables;                  // (num_seqs, max_blocks_per_seq)
  const int32_t* context_lens;                  // (num_seqs,)
  const int32_t* query_start_loc;               // (num_seqs + 1,)
  int64_t num_seqs, max_blocks_per_seq, num_blocks, block_size;
  int64_t hidden, num_heads, num_kv_heads, head_dim, intermediate;
  float eps, scale;
  uint16_t* out;  // (num_tokens, hidden): the final norm's output
  int num_threads;
  // embed is a packed (vocab_size, hidden) weight (linear_bf16.h): a tied output projection's, the
  // model's only copy of its embeddings.
  bool embed_packed = false;
  // Granite's: the embeddings, and each sublayer's output before it joins the residual, are scaled
  // by these (rounded to bf16 after the product, as torch's `x * multiplier` rounds).
  float embed_scale = 1.0f, residual_scale = 1.0f;
  // Every layer's attention window (Mistral v0.1, Phi-3-mini: paged_attention's sliding_window); 0: none.
  int64_t sliding_window = 0;
  // The mixture-of-experts layers' shape (moe_block.h): num_experts 0 where there are none.
  int64_t num_experts = 0, top_k = 0, moe_intermediate = 0;
  bool renormalize = true;
};

// Runs the stack; throws std::invalid_argument on ids, positions or attention metadata out of range.
void decoder_stack(const DecoderStackArgs& args);

// out (rows, n) = bf16(silu(gate)) * up, rounded to bf16, for gate_up (rows, 2n) rows
// gate_up_stride apart (gate in the first n columns): the torch formula F.silu(gate) * up.
void silu_and_mul_bf16(const uint16_t* gate_up, uint16_t* out, int64_t rows, int64_t n, int64_t gate_up_stride,
                       int num_threads);

}  // namespace llmaas
