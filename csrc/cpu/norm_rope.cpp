// RMSNorm with residual add, and rotate-half rotary embedding, on CPU (fp32 and bf16).
//
// Why
//   A decode step of a small model (SmolLM2-135M: hidden 576, 30 layers) spends
//   more time dispatching the small torch ops of these two layers (7 ops per
//   norm, ~10 per rotary) than computing them. One call each replaces them.
//
// fused_add_rms_norm, per row of `cols` elements:
//   x   = in + residual              (if residual given; rounded to the dtype)
//   h   = float(x)
//   r   = 1 / sqrt(sum(h * h) / cols + eps)
//   n   = h * r                      (rounded to the dtype)
//   out = float(weight) * float(n)   (rounded to the dtype)
//   residual_out = x                 (only when a residual was given)
// These are the rounding points of engine/models/layers.py's RMSNorm in torch
// (a bf16 op computes in fp32 and rounds once), so bf16 results equal torch's
// except where the fp32 sum of squares, summed in another order, differs in its
// last bit and that bit flips a rounding.
//
// rotary (in place), per (token, head) row x of head_dim D = 2 * half:
//   x[d]        = x[d] * cos[d] - x[d + half] * sin[d]                  d < half
//   x[d + half] = x[d + half] * cos[d + half] + x[d] * sin[d + half]
// computed in fp32. For bf16, torch_rounding rounds each product to bf16 and
// then the sum, as the torch formula does (and Hugging Face's
// apply_rotary_pos_emb), so results equal torch's bit for bit; without it only
// the sum is rounded (more accurate, but ~40% of elements then differ from
// torch by an ulp). fp32 results equal torch's up to FMA contraction.
//
// Layouts (strides in elements, last dimension unit stride)
//   norm:   in, residual (rows, cols), row strides given; weight (cols,);
//           out, residual_out (rows, cols) contiguous.
//   rotary: q (T, Hq, D) and k (T, Hkv, D) with token and head strides (views of
//           the fused qkv projection); cos, sin (T, D) with token strides.
//
// Threads: an OpenMP parallel region costs microseconds, more than a decode
// step's whole norm, so work below kParallelMinElems runs on the calling thread.
//
// ISA: the build targets x86-64-v2; the loops are compiled once more for
// AVX-512 and picked at load time (same ISA test as the linear kernel).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "bf16.h"
#include "isa_select.h"
#include "norm_rope.h"

#define LLMAAS_NR_INLINE __attribute__((always_inline)) inline
#define LLMAAS_NR_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

namespace llmaas {
namespace {

constexpr int64_t kParallelMinElems = int64_t{1} << 16;

LLMAAS_NR_INLINE float load(const float* p, int64_t i) { return p[i]; }
LLMAAS_NR_INLINE float load(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
LLMAAS_NR_INLINE void store(float* p, int64_t i, float v) { p[i] = v; }
LLMAAS_NR_INLINE void store(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }
// v as the dtype would hold it: what a torch op of that dtype hands the next op.
LLMAAS_NR_INLINE float round_to(float v, const float*) { return v; }
LLMAAS_NR_INLINE float round_to(float v, const uint16_t*) { return bf16_to_f32(f32_to_bf16(v)); }

struct NormArgs {
  const void* in;
  const void* residual;  // null: no residual add
  const void* weight;
  void* out;
  void* residual_out;  // written when residual is given
  int64_t rows, cols, in_stride, residual_stride;
  float eps;
};

template <typename T>
LLMAAS_NR_INLINE void norm_row(const NormArgs& a, int64_t row) {
  const int64_t n = a.cols;
  const T* in = static_cast<const T*>(a.in) + row * a.in_stride;
  const T* w = static_cast<const T*>(a.weight);
  T* out = static_cast<T*>(a.out) + row * n;
  const T* x = in;  // the row normed: the input, or input + residual as stored
  if (a.residual != nullptr) {
    const T* res = static_cast<const T*>(a.residual) + row * a.residual_stride;
    T* res_out = static_cast<T*>(a.residual_out) + row * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) store(res_out, i, load(in, i) + load(res, i));
    x = res_out;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float h = load(x, i);
    sum += h * h;
  }
  const float r = 1.0f / std::sqrt(sum / static_cast<float>(n) + a.eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) store(out, i, load(w, i) * round_to(load(x, i) * r, out));
}

template <typename T>
LLMAAS_NR_INLINE void norm_rows(const NormArgs& a, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) norm_row<T>(a, row);
}

struct RotaryArgs {
  void* q;
  void* k;
  const void* cos;
  const void* sin;
  int64_t num_tokens, num_heads, num_kv_heads, head_dim;
  int64_t q_token_stride, q_head_stride, k_token_stride, k_head_stride, cos_stride, sin_stride;
};

// kTorchRounding: round each product to the dtype before the sum, as the torch
// formula does (bit for bit equal to it); otherwise round only the result.
template <typename T, bool kTorchRounding>
LLMAAS_NR_INLINE void rotate_row(T* x, const T* c, const T* s, int64_t half) {
#pragma omp simd
  for (int64_t d = 0; d < half; ++d) {
    const float x1 = load(x, d), x2 = load(x, d + half);
    float a1 = x1 * load(c, d), b1 = x2 * load(s, d);
    float a2 = x2 * load(c, d + half), b2 = x1 * load(s, d + half);
    if constexpr (kTorchRounding) {
      a1 = round_to(a1, x), b1 = round_to(b1, x), a2 = round_to(a2, x), b2 = round_to(b2, x);
    }
    store(x, d, a1 - b1);
    store(x, d + half, a2 + b2);
  }
}

// Work items are (token, head) rows, q's heads then k's.
template <typename T, bool kTorchRounding>
LLMAAS_NR_INLINE void rotary_rows(const RotaryArgs& a, int64_t begin, int64_t end) {
  const int64_t heads = a.num_heads + a.num_kv_heads;
  const int64_t half = a.head_dim / 2;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t t = item / heads, h = item % heads;
    T* x = h < a.num_heads
               ? static_cast<T*>(a.q) + t * a.q_token_stride + h * a.q_head_stride
               : static_cast<T*>(a.k) + t * a.k_token_stride + (h - a.num_heads) * a.k_head_stride;
    rotate_row<T, kTorchRounding>(x, static_cast<const T*>(a.cos) + t * a.cos_stride,
                                  static_cast<const T*>(a.sin) + t * a.sin_stride, half);
  }
}

// One function per (ISA, dtype): the loops are inlined into each, so each is
// compiled for its own ISA. (An OpenMP region inside a template would be
// outlined once, for the baseline ISA, whichever caller it is inlined into.)
template <typename Args>
using RowsFn = void (*)(const Args&, int64_t, int64_t);

#define LLMAAS_NR_VARIANT(NAME, ARGS, ...)                                                 \
  void NAME(const ARGS& a, int64_t b, int64_t e) { __VA_ARGS__(a, b, e); } \
  LLMAAS_NR_AVX512 void NAME##_avx512(const ARGS& a, int64_t b, int64_t e) { __VA_ARGS__(a, b, e); }
LLMAAS_NR_VARIANT(norm_f32, NormArgs, norm_rows<float>)
LLMAAS_NR_VARIANT(norm_bf16, NormArgs, norm_rows<uint16_t>)
LLMAAS_NR_VARIANT(rotary_f32, RotaryArgs, rotary_rows<float, false>)
LLMAAS_NR_VARIANT(rotary_bf16_torch, RotaryArgs, rotary_rows<uint16_t, true>)
LLMAAS_NR_VARIANT(rotary_bf16_once, RotaryArgs, rotary_rows<uint16_t, false>)
#undef LLMAAS_NR_VARIANT

// Runs fn over [0, items) on the calling thread, or split evenly over
// num_threads when the work (items * item_elems) is worth a parallel region.
template <typename Args>
void run(RowsFn<Args> fn, const Args& a, int64_t items, int64_t item_elems, int num_threads) {
  if (num_threads <= 1 || items <= 1 || items * item_elems < kParallelMinElems) {
    fn(a, 0, items);
    return;
  }
  const int64_t threads = std::min<int64_t>(num_threads, items);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < threads; ++i) fn(a, items * i / threads, items * (i + 1) / threads);
}

const bool kUseAvx512 = cpu_has_avx512();

}  // namespace

// Entry points for csrc/cpu/norm_rope_bindings.cpp (declared there; no header).
void fused_add_rms_norm(const void* in, const void* residual, const void* weight, void* out, void* residual_out,
                        bool bf16, int64_t rows, int64_t cols, int64_t in_stride, int64_t residual_stride,
                        float eps, int num_threads) {
  const NormArgs a{in, residual, weight, out, residual_out, rows, cols, in_stride, residual_stride, eps};
  const RowsFn<NormArgs> fn = kUseAvx512 ? (bf16 ? norm_bf16_avx512 : norm_f32_avx512) : (bf16 ? norm_bf16 : norm_f32);
  run(fn, a, rows, cols, num_threads);
}

void rotary(void* q, void* k, const void* cos, const void* sin, bool bf16, int64_t num_tokens, int64_t num_heads,
            int64_t num_kv_heads, int64_t head_dim, int64_t q_token_stride, int64_t q_head_stride,
            int64_t k_token_stride, int64_t k_head_stride, int64_t cos_stride, int64_t sin_stride,
            bool torch_rounding, int num_threads) {
  const RotaryArgs a{q, k, cos, sin, num_tokens, num_heads, num_kv_heads, head_dim, q_token_stride, q_head_stride,
                     k_token_stride, k_head_stride, cos_stride, sin_stride};
  RowsFn<RotaryArgs> fn = kUseAvx512 ? rotary_f32_avx512 : rotary_f32;
  if (bf16 && torch_rounding) fn = kUseAvx512 ? rotary_bf16_torch_avx512 : rotary_bf16_torch;
  if (bf16 && !torch_rounding) fn = kUseAvx512 ? rotary_bf16_once_avx512 : rotary_bf16_once;
  run(fn, a, num_tokens * (num_heads + num_kv_heads), head_dim, num_threads);
}

}  // namespace llmaas
