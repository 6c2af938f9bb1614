// SiLU-and-multiply of the Llama MLP for bf16 on CPU: out = bf16(silu(gate)) * up.
//
// Rounding follows the torch formula F.silu(gate) * up on bf16 tensors: silu is
// computed in fp32 as x / (1 + exp(-x)) and rounded to bf16, then the product is
// computed in fp32 and rounded. exp is a polynomial (vec.h's, within 2 ulp of fp32)
// where torch uses Sleef's (1 ulp), so rare results differ from torch by one bf16 ulp.
//
// Vectorized with vec.h's GCC vector types for AVX-512 (picked at run time) and the
// x86-64-v2 baseline; bf16 is widened and narrowed in registers. A scalar loop with
// libm's expf costs ~10 ns an element, as much as the MLP's matmuls at decode.
// Threads: only large calls (prefill) split rows over threads; a decode row of a small
// model is ~1 us of work, less than waking the team.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "decoder_stack.h"
#include "isa_select.h"
#include "vec.h"

namespace llmaas {
namespace {

constexpr int64_t kParallelMinElems = int64_t{1} << 16;

// Lanes of bf16 bits and of their fp32 bits, per vector width (GCC needs the sizes spelled out:
// a vector_size that depends on a template parameter does not make a vector type).
template <int W>
struct BitsOf;
template <>
struct BitsOf<16> {
  typedef uint16_t H __attribute__((vector_size(32)));
  typedef uint32_t U __attribute__((vector_size(64)));
};
template <>
struct BitsOf<4> {
  typedef uint16_t H __attribute__((vector_size(8)));
  typedef uint32_t U __attribute__((vector_size(16)));
};

template <int W>
struct Bf16Vec {
  using F = typename Simd<W>::F;
  using H = typename BitsOf<W>::H;
  using U = typename BitsOf<W>::U;

  static LLMAAS_INLINE F load(const uint16_t* p) {
    H h;
    std::memcpy(&h, p, sizeof h);
    const U bits = __builtin_convertvector(h, U) << 16;
    F f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }

  // Round to nearest even, NaN kept quiet: bf16.h's f32_to_bf16, lane-wise.
  static LLMAAS_INLINE U round_bits(F f) {
    U bits;
    std::memcpy(&bits, &f, sizeof bits);
    const U rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return (bits & 0x7fffffffu) > 0x7f800000u ? (bits >> 16) | 0x40u : rounded;
  }

  static LLMAAS_INLINE void store(uint16_t* p, F f) {
    const H h = __builtin_convertvector(round_bits(f), H);
    std::memcpy(p, &h, sizeof h);
  }

  static LLMAAS_INLINE F round(F f) {
    const U bits = round_bits(f) << 16;
    F r;
    std::memcpy(&r, &bits, sizeof r);
    return r;
  }
};

// exp(x) for any x: vec.h's exp_nonpositive range reduction on x clamped to [-87, 88], so that
// 2^n stays a normal float; past expf's overflow threshold it is infinity, as in torch, so that
// silu of a very negative x is -0 there too.
template <typename V>
LLMAAS_INLINE V exp_clamped(V x) {
  using VI = typename Simd<kLanesOf<V>>::I;
  const V lowest = V{} - 87.0f, highest = V{} + 88.0f;
  const auto overflow = x > 88.72283935546875f;
  x = x < lowest ? lowest : x;
  x = x > highest ? highest : x;
  const V t = x * 1.44269504f + 12582912.0f;
  const V n = t - 12582912.0f;
  const V r = x - n * 0.693359375f + n * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const VI two_to_n = ((VI)t - 0x4B400000 + 127) << 23;
  const V e = p * (V)two_to_n;
  return overflow ? V{} + INFINITY : e;
}

struct SiluArgs {
  const uint16_t* gate_up;
  uint16_t* out;
  int64_t n, stride;
};

template <int W>
LLMAAS_INLINE void silu_rows(const SiluArgs& a, int64_t begin, int64_t end) {
  using B = Bf16Vec<W>;
  using F = typename B::F;
  for (int64_t row = begin; row < end; ++row) {
    const uint16_t* gate = a.gate_up + row * a.stride;
    const uint16_t* up = gate + a.n;
    uint16_t* out = a.out + row * a.n;
    int64_t i = 0;
    for (; i + W <= a.n; i += W) {
      const F g = B::load(gate + i);
      const F s = B::round(g / (1.0f + exp_clamped(-g)));
      B::store(out + i, s * B::load(up + i));
    }
    for (; i < a.n; ++i) {  // the tail, lane by lane through the same formula
      const float g = bf16_to_f32(gate[i]);
      const float s = bf16_to_f32(f32_to_bf16(g / (1.0f + std::exp(-g))));
      out[i] = f32_to_bf16(s * bf16_to_f32(up[i]));
    }
  }
}

using SiluFn = void (*)(const SiluArgs&, int64_t, int64_t);

void silu_baseline(const SiluArgs& a, int64_t b, int64_t e) { silu_rows<4>(a, b, e); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void silu_avx512(const SiluArgs& a, int64_t b,
                                                                                         int64_t e) {
  silu_rows<16>(a, b, e);
}

// Asked on first use, not in a static initializer (which may run before libgcc knows the CPU).
SiluFn pick_silu() { return cpu_has_avx512() ? silu_avx512 : silu_baseline; }

}  // namespace

void silu_and_mul_bf16(const uint16_t* gate_up, uint16_t* out, int64_t rows, int64_t n, int64_t gate_up_stride,
                       int num_threads) {
  static const SiluFn fn = pick_silu();
  const SiluArgs a{gate_up, out, n, gate_up_stride};
  if (num_threads <= 1 || rows <= 1 || rows * n < kParallelMinElems) {
    fn(a, 0, rows);
    return;
  }
  const int64_t threads = std::min<int64_t>(num_threads, rows);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < threads; ++i) fn(a, rows * i / threads, rows * (i + 1) / threads);
}

}  // namespace llmaas
