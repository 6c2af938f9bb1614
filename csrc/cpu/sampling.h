// Sampling one token per row from fp32 logits on CPU: at random (temperature, top-k, top-p, min-p,
// by inverting each row's distribution at a given uniform variate), or greedily. See sampling.cpp.
#pragma once

#include <cstdint>

namespace llmaas {

struct SampleArgs {
  const float* logits;       // (rows, vocab), rows row_stride floats apart
  int64_t rows, vocab, row_stride;
  const float* temperature;  // (rows,) > 0
  const int64_t* top_k;      // (rows,) or null; >= vocab or <= 0: off
  const float* top_p;        // (rows,) or null; >= 1: off
  const float* min_p;        // (rows,) or null; <= 0: off
  const double* uniforms;    // (rows,) in [0, 1)
  int64_t* out;              // (rows,) the sampled ids
  int num_threads;
};

void sample_rows(const SampleArgs& args);

// out[r] = the first index of row r's largest value, a NaN counting as the largest (torch.argmax).
void argmax_rows(const float* logits, int64_t rows, int64_t vocab, int64_t row_stride, int64_t* out, int num_threads);

}  // namespace llmaas
