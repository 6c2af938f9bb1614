// Entry points of the bf16 linear layer y = x @ W^T (csrc/cpu/linear_bf16.cpp).
//
// Like the attention kernels, they take raw pointers plus sizes and strides
// (Python passes `tensor.data_ptr()`), check sizes, and throw
// std::invalid_argument (ValueError in Python) on bad ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"

namespace llmaas {

// Output features (rows of W) per tile of the packed weight.
constexpr int64_t kLinearTileN = 32;

// Packs W (n, k) bf16, rows `w_row_stride` elements apart, into `packed`, which
// holds ceil(n / kLinearTileN) * ceil(k / 2) * kLinearTileN * 2 elements (see
// the layout in linear_bf16.cpp). Done once, when the model loads.
void pack_linear_weight(const uint16_t* w, uint16_t* packed, int64_t n, int64_t k, int64_t w_row_stride,
                        int num_threads);

struct LinearArgs {
  const uint16_t* x;         // (m, k) bf16, rows x_row_stride elements apart
  const uint16_t* w_packed;  // W (n, k) packed by pack_linear_weight
  void* y;                   // (m, n) of out_dtype, rows y_row_stride elements apart
  DType out_dtype;
  int64_t m, n, k;
  int64_t x_row_stride, y_row_stride;  // in elements
  int num_threads;
  // The same W packed by pack_linear_weight_q4_1 (linear_q4_1.h), or null: used when it pays.
  const uint8_t* w_q4_1 = nullptr;
  // (n,) fp32 added to each row of y before it is rounded (a biased linear's bias), or null.
  const float* bias = nullptr;
};

// y = x @ W^T, products of bf16 accumulated in fp32, rounded to nearest even
// when out_dtype is bfloat16.
void linear_bf16(const LinearArgs& args);

// Many weights of one shape (n, k) over consecutive row ranges of one x: group g's rows
// [row_starts[g], row_starts[g + 1]) of x go through w_packed[g] into the same rows of y. The
// experts of a mixture-of-experts layer, each over the tokens routed to it: one thread team for
// all of them (not one per expert), every row's output the bits linear_bf16 gives it.
struct GroupedLinearArgs {
  const uint16_t* x;                // (m, k) bf16, rows x_row_stride elements apart
  const uint16_t* const* w_packed;  // groups weights (n, k), each packed by pack_linear_weight
  const int64_t* row_starts;        // groups + 1 nondecreasing row indices, from 0 to m
  int64_t groups;
  void* y;  // (m, n) of out_dtype, rows y_row_stride elements apart
  DType out_dtype;
  int64_t n, k;
  int64_t x_row_stride, y_row_stride;  // in elements
  int num_threads;
};

void linear_bf16_grouped(const GroupedLinearArgs& args);

// out[i] = W[ids[i]] for i < count: rows of a packed W (n, k), each k bf16 written out_row_stride
// elements apart. Throws std::invalid_argument for an id outside [0, n). The embedding of a model
// whose input embedding is its output projection's weight (tied), kept only packed.
void gather_packed_rows(const uint16_t* packed, int64_t n, int64_t k, const int64_t* ids, int64_t count,
                        uint16_t* out, int64_t out_row_stride);

// Instruction-set variant ("avx512_bf16", "avx512", "avx2", "baseline"): the
// best the CPU supports is chosen at load time; tests force each in turn.
std::vector<std::string> supported_linear_isas();
std::string linear_isa();
void set_linear_isa(const std::string& isa);

}  // namespace llmaas
