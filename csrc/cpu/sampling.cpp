// Sampling on CPU, one row at a time (rows split over threads): at random, and greedily (argmax_row).
//
// Semantics are engine/sampler.py's torch path: logits / temperature; keep the top-k; keep the
// smallest prefix, by descending probability, whose mass reaches top-p (mass within the top-k
// when top-k cut, else within the whole vocabulary; the first token always stays); drop what is
// below min_p times the largest kept probability; draw by inverting the kept distribution at the
// row's uniform variate u. Kept tokens are walked in descending order (ties: lower id first), so
// for a given u the token may differ from the torch path's (which walks vocabulary order when it
// sorted the whole row), never the distribution.
//
// Why: torch's CPU topk of 256 over a 49k vocabulary, its sort and logsumexp cost ~7 ms per
// batch-32 step (12% of a one-thread decode step). Here a row costs three vectorized passes
// (max, exp and sum, then the gathering of candidates) and a sort of the candidates: the tokens
// within 8 nats of the row's largest weight (after temperature), which hold a model's nucleus,
// or 12, 16, 24 nats, then all, when top-k, top-p or min-p needs more (exactly: a decision that could depend on a
// token left out gathers deeper). Plain temperature draws over the whole row, in vocabulary order.
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "isa_select.h"
#include "vec.h"

namespace llmaas {
namespace {

// Depths (nats below the row's largest weight) at which candidates are gathered, shallow first;
// the last holds every token (exp_nonpositive clamps at -87, exp(-88) is not representable).
constexpr float kDepths[] = {8.0f, 12.0f, 16.0f, 24.0f, 104.0f};

struct Candidate {
  float weight;  // exp((z - max) / T)
  int64_t id;
};

template <typename V>
LLMAAS_INLINE float row_max(const float* z, int64_t n) {
  constexpr int64_t W = kLanesOf<V>;
  V best = V{} - INFINITY;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V x = load_vec<V>(z + i);
    best = x > best ? x : best;
  }
  float m = reduce_max(best);
  for (; i < n; ++i) m = std::max(m, z[i]);
  return m;
}

// weights[i] = exp((z[i] - m) * inv_t); returns their sum.
template <typename V>
LLMAAS_INLINE double exp_weights(const float* z, int64_t n, float m, float inv_t, float* weights) {
  constexpr int64_t W = kLanesOf<V>;
  V sum{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V w = exp_nonpositive((load_vec<V>(z + i) - m) * inv_t);
    store_vec(weights + i, w);
    sum += w;
  }
  double total = reduce_add(sum);
  for (; i < n; ++i) {
    weights[i] = std::exp((z[i] - m) * inv_t);
    total += weights[i];
  }
  return total;
}

// Walks `kept` (descending) to the token where the cumulative weight passes u * total.
int64_t invert(const std::vector<Candidate>& kept, size_t count, double u) {
  double total = 0;
  for (size_t j = 0; j < count; ++j) total += kept[j].weight;
  const double target = u * total;
  double cumulative = 0;
  for (size_t j = 0; j < count; ++j) {
    cumulative += kept[j].weight;
    if (cumulative > target) return kept[j].id;
  }
  return kept[count - 1].id;  // u * total rounded up to the total
}

// Tokens whose weight (relative to the row's largest, after temperature) is at least e^-depth, in
// vocabulary order. Blocks of a vector whose weights are all below are skipped whole: with a
// model's peaked logits almost every block is.
template <typename V>
LLMAAS_INLINE void gather(const float* weights, int64_t n, float depth, std::vector<Candidate>& out) {
  constexpr int64_t W = kLanesOf<V>;
  const float floor = std::exp(-depth);
  out.clear();
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    if (reduce_max(load_vec<V>(weights + i)) < floor) continue;
    for (int64_t j = i; j < i + W; ++j)
      if (weights[j] >= floor) out.push_back({weights[j], j});
  }
  for (; i < n; ++i)
    if (weights[i] >= floor) out.push_back({weights[i], i});
}

bool heavier(const Candidate& x, const Candidate& y) {
  return x.weight > y.weight || (x.weight == y.weight && x.id < y.id);
}

// How many candidates top-k, top-p and min-p keep, with those first and by weight descending;
// or 0 when that depends on tokens left out of them (the caller then gathers deeper).
// `complete`: no token was left out.
size_t kept_count(std::vector<Candidate>& candidates, bool complete, float floor, int64_t top_k, float top_p,
                  float min_p, double row_total) {
  size_t count = candidates.size();
  double mass_total = row_total;
  if (top_k > 0) {
    if (!complete && count < static_cast<size_t>(top_k)) return 0;  // the k-th is further down
    count = std::min<size_t>(count, static_cast<size_t>(top_k));
    // Only the top k need an order: the rest is dropped whatever it holds.
    std::partial_sort(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(count), candidates.end(),
                      heavier);
    mass_total = 0;  // top-p's mass is taken within the top-k when top-k cut
    for (size_t j = 0; j < count; ++j) mass_total += candidates[j].weight;
  } else {
    std::sort(candidates.begin(), candidates.end(), heavier);
  }
  if (top_p < 1.0f) {
    double before = 0;  // mass ahead of j; the first token always stays
    size_t j = 0;
    for (; j < count; ++j) {
      if (j > 0 && before >= top_p * mass_total) break;
      before += candidates[j].weight;
    }
    if (j == count && top_k == 0 && !complete && before < top_p * mass_total) return 0;
    count = j;
  } else if (top_k == 0 && !complete && min_p * candidates[0].weight < floor) {
    return 0;  // min-p alone keeps tokens below the floor too
  }
  if (min_p > 0.0f) {  // below min_p of the largest kept probability: dropped
    const float threshold = min_p * candidates[0].weight;
    while (count > 1 && candidates[count - 1].weight < threshold) --count;
  }
  return count;
}

// Plain temperature: the exact inverse CDF over the whole row, in vocabulary order.
int64_t invert_row(const float* weights, int64_t n, double total, double u) {
  const double target = u * total;
  double cumulative = 0;
  int64_t last = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (weights[i] <= 0.0f) continue;
    cumulative += weights[i];
    last = i;
    if (cumulative > target) return i;
  }
  return last;
}

template <typename V>
LLMAAS_INLINE int64_t sample_row(const SampleArgs& a, int64_t row, std::vector<float>& weights,
                                 std::vector<Candidate>& candidates) {
  const float* z = a.logits + row * a.row_stride;
  const int64_t n = a.vocab;
  const float inv_t = 1.0f / a.temperature[row];
  const float m = row_max<V>(z, n);
  const double total = exp_weights<V>(z, n, m, inv_t, weights.data());
  const double u = a.uniforms[row];
  const int64_t top_k = a.top_k != nullptr && a.top_k[row] > 0 && a.top_k[row] < n ? a.top_k[row] : 0;
  const float top_p = a.top_p != nullptr ? a.top_p[row] : 1.0f;
  const float min_p = a.min_p != nullptr ? a.min_p[row] : 0.0f;
  if (top_k == 0 && top_p >= 1.0f && min_p <= 0.0f) return invert_row(weights.data(), n, total, u);
  // Shallow first: a model's nucleus is a few to a few hundred tokens near the top.
  for (const float depth : kDepths) {
    gather<V>(weights.data(), n, depth, candidates);
    const bool complete = static_cast<int64_t>(candidates.size()) == n;
    const size_t count = kept_count(candidates, complete, std::exp(-depth), top_k, top_p, min_p, total);
    if (count > 0) return invert(candidates, count, u);
  }
  // Unreachable: the last depth takes every token (weights are >= e^-87 or 0, see exp_nonpositive).
  return invert_row(weights.data(), n, total, u);
}

// Greedy decoding's argmax: the first index of the row's largest value, a NaN counting as larger
// than any number (torch.argmax's rule, so greedy tokens do not depend on the path). One pass:
// each lane keeps its largest value and where it was (strictly larger replaces, so the first of
// equals stays); the lanes then settle on the largest value's lowest index. torch's CPU argmax
// took ~0.65 ms for a batch-32 step's (32, 49152) logits; this is one read of them.
template <typename V>
LLMAAS_INLINE int64_t argmax_row(const float* z, int64_t n) {
  constexpr int64_t W = kLanesOf<V>;
  using VI = typename Simd<W>::I;
  V best = V{} - INFINITY;
  VI best_at, at, nan{};
  for (int64_t j = 0; j < W; ++j) best_at[j] = at[j] = static_cast<int32_t>(j);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V x = load_vec<V>(z + i);
    const VI larger = x > best;
    best = larger ? x : best;
    best_at = larger ? at : best_at;
    nan |= x != x;
    at += static_cast<int32_t>(W);
  }
  bool any_nan = false;
  for (int64_t j = 0; j < W; ++j) any_nan |= nan[j] != 0;
  for (int64_t k = i; k < n; ++k) any_nan |= std::isnan(z[k]);
  if (any_nan)
    for (int64_t k = 0; k < n; ++k)
      if (std::isnan(z[k])) return k;
  float m = best[0];
  int64_t index = best_at[0];
  for (int64_t j = 1; j < W; ++j)
    if (best[j] > m || (best[j] == m && best_at[j] < index)) m = best[j], index = best_at[j];
  for (; i < n; ++i)
    if (z[i] > m) m = z[i], index = i;
  return index;
}

using RowFn = int64_t (*)(const SampleArgs&, int64_t, std::vector<float>&, std::vector<Candidate>&);
using ArgmaxFn = int64_t (*)(const float*, int64_t);

int64_t row_baseline(const SampleArgs& a, int64_t row, std::vector<float>& w, std::vector<Candidate>& c) {
  return sample_row<Simd<4>::F>(a, row, w, c);
}

int64_t argmax_baseline(const float* z, int64_t n) { return argmax_row<Simd<4>::F>(z, n); }

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) int64_t row_avx512(
    const SampleArgs& a, int64_t row, std::vector<float>& w, std::vector<Candidate>& c) {
  return sample_row<Simd<16>::F>(a, row, w, c);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) int64_t argmax_avx512(const float* z,
                                                                                             int64_t n) {
  return argmax_row<Simd<16>::F>(z, n);
}
#endif

RowFn pick_row_fn() {
#if defined(__x86_64__)
  if (cpu_has_avx512()) return row_avx512;
#endif
  return row_baseline;
}

ArgmaxFn pick_argmax_fn() {
#if defined(__x86_64__)
  if (cpu_has_avx512()) return argmax_avx512;
#endif
  return argmax_baseline;
}

}  // namespace

void sample_rows(const SampleArgs& args) {
  static const RowFn row_fn = pick_row_fn();
  const bool parallel = args.num_threads > 1 && args.rows > 1 && args.rows * args.vocab >= (1 << 16);
#pragma omp parallel num_threads(args.num_threads) if (parallel)
  {
    std::vector<float> weights(static_cast<size_t>(args.vocab));
    std::vector<Candidate> candidates;
    candidates.reserve(1024);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < args.rows; ++row) args.out[row] = row_fn(args, row, weights, candidates);
  }
}

void argmax_rows(const float* logits, int64_t rows, int64_t vocab, int64_t row_stride, int64_t* out,
                 int num_threads) {
  static const ArgmaxFn argmax_fn = pick_argmax_fn();
  const bool parallel = num_threads > 1 && rows > 1 && rows * vocab >= (1 << 16);
#pragma omp parallel for num_threads(num_threads) if (parallel) schedule(static)
  for (int64_t row = 0; row < rows; ++row) out[row] = argmax_fn(logits + row * row_stride, vocab);
}

}  // namespace llmaas
