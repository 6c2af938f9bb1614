// Mixture-of-experts MLP on CPU: see moe_block.h. The steps are engine/kernels/moe.py's, so the stack and
// the per-op path agree but for silu's last ulp (activation.cpp) and exp's in the router's softmax.
#include "moe_block.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "bf16.h"
#include "decoder_stack.h"
#include "linear_bf16.h"

namespace llmaas {
namespace {

// A token's top_k experts and weights from its E router logits: softmax, then the largest top_k.
void route(const float* logits, int64_t E, int64_t K, bool renormalize, int64_t* ids, float* weights) {
  const float max = *std::max_element(logits, logits + E);
  std::vector<float> probs(E);
  float sum = 0.0f;
  for (int64_t e = 0; e < E; ++e) sum += probs[e] = std::exp(logits[e] - max);
  for (int64_t e = 0; e < E; ++e) probs[e] /= sum;
  std::vector<int64_t> order(E);
  for (int64_t e = 0; e < E; ++e) order[e] = e;
  std::partial_sort(order.begin(), order.begin() + K, order.end(),
                    [&](int64_t a, int64_t b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
  float chosen = 0.0f;
  for (int64_t j = 0; j < K; ++j) chosen += probs[order[j]];
  for (int64_t j = 0; j < K; ++j) {
    ids[j] = order[j];
    weights[j] = renormalize ? probs[order[j]] / chosen : probs[order[j]];
  }
}

}  // namespace

void moe_block(const uint16_t* h, uint16_t* x, int64_t T, int64_t H, const MoeShape& s, const MoeWeights& w,
               int threads) {
  const int64_t E = s.num_experts, K = s.top_k, I = s.intermediate, N = T * K;
  if (E < 1 || K < 1 || K > E || I < 1 || T < 1 || H < 1) throw std::invalid_argument("moe_block: invalid sizes");
  std::vector<float> logits(T * E);
  linear_bf16(LinearArgs{h, w.router, logits.data(), DType::kFloat32, T, E, H, H, E, threads, nullptr});
  std::vector<int64_t> ids(N);
  std::vector<float> weights(N);
  for (int64_t t = 0; t < T; ++t) route(&logits[t * E], E, K, s.renormalize, &ids[t * K], &weights[t * K]);

  // The (token, slot) pairs sorted by expert, stably: row r of the grouped calls is pair order[r].
  std::vector<int64_t> next(E, 0);
  for (int64_t n = 0; n < N; ++n) ++next[ids[n]];
  std::vector<int64_t> row_starts{0};
  std::vector<const uint16_t*> gate_up, down;
  for (int64_t e = 0, row = 0; e < E; ++e) {
    const int64_t count = next[e];
    next[e] = row;
    if (count == 0) continue;
    row += count;
    row_starts.push_back(row);
    gate_up.push_back(w.gate_up[e]);
    down.push_back(w.down[e]);
  }
  std::vector<int64_t> order(N);
  for (int64_t n = 0; n < N; ++n) order[next[ids[n]]++] = n;

  std::vector<uint16_t> rows(N * H), gate_up_out(N * 2 * I), act(N * I);
  std::vector<float> y(N * H), out(T * H, 0.0f);
  for (int64_t r = 0; r < N; ++r) std::memcpy(&rows[r * H], h + order[r] / K * H, H * sizeof(uint16_t));
  const int64_t groups = static_cast<int64_t>(gate_up.size());
  linear_bf16_grouped(GroupedLinearArgs{rows.data(), gate_up.data(), row_starts.data(), groups, gate_up_out.data(),
                                        DType::kBFloat16, 2 * I, H, H, 2 * I, threads});
  silu_and_mul_bf16(gate_up_out.data(), act.data(), N, I, 2 * I, threads);
  linear_bf16_grouped(GroupedLinearArgs{act.data(), down.data(), row_starts.data(), groups, y.data(),
                                        DType::kFloat32, H, I, I, H, threads});
  for (int64_t r = 0; r < N; ++r) {
    float* dst = &out[order[r] / K * H];
    const float* src = &y[r * H];
    const float weight = weights[order[r]];
    for (int64_t i = 0; i < H; ++i) dst[i] += src[i] * weight;
  }
  for (int64_t i = 0; i < T * H; ++i) x[i] = f32_to_bf16(out[i]);
}

}  // namespace llmaas
