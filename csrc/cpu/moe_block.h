// A mixture-of-experts MLP of a bf16 model on CPU (csrc/cpu/moe_block.cpp), as the C++ decoder stack
// runs it: engine/kernels/moe.py's route() and experts_forward() in one call, through the same kernels.
#pragma once

#include <cstdint>

namespace llmaas {

struct MoeShape {
  int64_t num_experts;   // E
  int64_t top_k;         // experts a token goes through
  int64_t intermediate;  // I, each expert's width
  bool renormalize;      // the chosen experts' softmax weights rescaled to sum to 1
};

struct MoeWeights {
  const uint16_t* router;            // packed (E, hidden), see linear_bf16.h
  const uint16_t* const* gate_up;    // E packed (2I, hidden): gate rows, then up rows
  const uint16_t* const* down;       // E packed (hidden, I)
};

// x (T, hidden) = the experts' weighted sum for each row of h (T, hidden): router logits in fp32, softmax,
// top_k (ties to the lower expert), rows sorted by expert (stable), gate/up and down of every chosen expert
// in one grouped call each, silu(gate) * up in bf16, the weighted products summed in fp32 in that sorted
// order, rounded to bf16 once.
void moe_block(const uint16_t* h, uint16_t* x, int64_t T, int64_t hidden, const MoeShape& shape,
               const MoeWeights& weights, int num_threads);

}  // namespace llmaas
