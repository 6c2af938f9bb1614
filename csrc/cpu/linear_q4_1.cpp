// The bf16 linear layer y = x @ W^T on W's Q4_1 form, for decode batches (see linear_q4_1.h).
//
// Q4_1 (a GGUF block of 32 weights along k): w = d * q + m, q a 4-bit integer, d and m fp16.
// The loader makes the bf16 weight as bf16(fp32(d) * q + fp32(m)), rounded to nearest even; the
// product is exact in fp32 (11 by 4 bits), so one fused multiply-add rounds as that mul and add
// do, and vcvtne2ps2bf16 rounds to nearest even: the kernel widens to those very values.
//
// Data layout (packed once at load time, 0.625 bytes a weight as in the file)
//   Tiles of T = 32 output features, as linear_bf16's; a tile is k / 32 groups of 640 bytes, one
//   per GGUF block column:
//     d[32] fp16, m[32] fp16 of the tile's features (128 bytes), then 16 pair rows of 32 bytes.
//   Pair row p (k = 2p, 2p + 1 within the group) holds two halves of 16 bytes, features 16h to
//   16h + 15. Byte j of a half: low nibble = q of lane j of "B", high nibble = lane j of "A", where
//     B lane j = (feature 16h + j / 2, k = 2p + j % 2),  A lane j = (feature 16h + 8 + j / 2, same k).
//   So one zero-extension to 16 dwords, a mask and a shift give B's and A's q in lane order,
//   two FMAs against d and m spread the same way ([d0, d0, d1, d1, ...]) give fp32 weights, and
//   vcvtne2ps2bf16(A, B), whose low 16 words are B's and high 16 A's, lays them out as the bf16
//   kernel's tile row: dword i = (W[c][2p], W[c][2p + 1]) for feature c = 16h + i.
//
// Design
//   Per pair row: 2 x (load, zero-extend, and, shift, 2 converts, 2 FMAs, 1 narrowing) widen 64
//   weights, then each of the R rows does the same two vdpbf16ps as the bf16 kernel, in the same
//   order over k, into the same accumulators: the bits match linear_bf16's. The widening is ~9x the
//   multiply-adds at R = 1, which the 3.2x fewer bytes repay while a step is bound by DRAM.
//   Threads split the tiles into contiguous chunks; each streams its part of W front to back.
#include "linear_q4_1.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "amx.h"
#include "tile_store.h"
#include "vec.h"

namespace llmaas {
namespace {

constexpr int64_t kTile = kLinearTileN;
constexpr int64_t kGroupK = 32;                             // weights of a GGUF block, along k
constexpr int64_t kScalesBytes = 4 * kTile;                 // d[32] and m[32], fp16
constexpr int64_t kGroupBytes = kScalesBytes + kTile * kGroupK / 2;  // 640
constexpr int64_t kMinParallelWork = 1 << 17;               // as linear_bf16.cpp

}  // namespace

int64_t packed_q4_1_bytes(int64_t n, int64_t k) { return (n + kTile - 1) / kTile * (k / kGroupK) * kGroupBytes; }

void pack_linear_weight_q4_1(const uint8_t* blocks, uint8_t* packed, int64_t n, int64_t k, int num_threads) {
  if (n <= 0 || k <= 0 || k % kGroupK) throw std::invalid_argument("pack_linear_weight_q4_1: invalid sizes");
  const int64_t tiles = (n + kTile - 1) / kTile, groups = k / kGroupK;
  const int64_t row_bytes = groups * kQ4_1BlockBytes;
#pragma omp parallel for num_threads(std::max(num_threads, 1)) if (n * k >= kMinParallelWork)
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t g = 0; g < groups; ++g) {
      uint8_t* dst = packed + (t * groups + g) * kGroupBytes;
      std::memset(dst, 0, kGroupBytes);  // features past n: d = m = q = 0, weights 0
      auto block = [&](int64_t c) { return blocks + (t * kTile + c) * row_bytes + g * kQ4_1BlockBytes; };
      // q of feature c (< valid) at k = g * 32 + kk; GGUF: byte i holds k = i (low), i + 16 (high).
      auto q = [&](int64_t c, int64_t kk) -> uint8_t {
        const uint8_t byte = block(c)[4 + kk % 16];
        return kk < 16 ? byte & 0x0F : byte >> 4;
      };
      const int64_t valid = std::min(kTile, n - t * kTile);
      for (int64_t c = 0; c < valid; ++c) {
        std::memcpy(dst + 2 * c, block(c), 2);                  // d
        std::memcpy(dst + 2 * kTile + 2 * c, block(c) + 2, 2);  // m
      }
      for (int64_t p = 0; p < kGroupK / 2; ++p)
        for (int64_t h = 0; h < 2; ++h)
          for (int64_t j = 0; j < 16; ++j) {
            const int64_t kk = 2 * p + j % 2, b = 16 * h + j / 2, a = b + 8;
            const uint8_t lo = b < valid ? q(b, kk) : 0, hi = a < valid ? q(a, kk) : 0;
            dst[kScalesBytes + p * 32 + h * 16 + j] = static_cast<uint8_t>(lo | hi << 4);
          }
    }
}

#if defined(__x86_64__)
namespace {

#define LLMAAS_Q4_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,f16c")))

// fp32 d (or m) of features 16h..16h+15, spread for B ([d0, d0, ..., d7, d7]) and A ([d8, d8, ...]).
struct Spread {
  __m512 b, a;
};

LLMAAS_Q4_TARGET LLMAAS_INLINE Spread spread(const uint8_t* fp16x16) {
  const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(fp16x16)));
  const __m512i lo = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
  return {_mm512_permutexvar_ps(lo, v), _mm512_permutexvar_ps(hi, v)};
}

// 32 bf16 weights (16 features x the pair) of one half of a pair row: the bf16 kernel's w0 or w1.
LLMAAS_Q4_TARGET LLMAAS_INLINE __m512bh widen(const uint8_t* half, const Spread& d, const Spread& m) {
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(half)));
  const __m512i q_b = _mm512_and_si512(bytes, _mm512_set1_epi32(0x0F));
  const __m512i q_a = _mm512_srli_epi32(bytes, 4);
  const __m512 w_b = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q_b), d.b, m.b);
  const __m512 w_a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q_a), d.a, m.a);
  return _mm512_cvtne2ps_pbh(w_a, w_b);
}

// Calls row(p, w0, w1) for the 16 pair rows of one GGUF block column of a tile, widened to the bf16
// kernel's tile rows (features 0-15 in w0, 16-31 in w1).
template <typename Row>
LLMAAS_Q4_TARGET LLMAAS_INLINE void widen_group(const uint8_t* group, Row row) {
  const Spread d0 = spread(group), d1 = spread(group + 32);
  const Spread m0 = spread(group + 2 * kTile), m1 = spread(group + 2 * kTile + 32);
  const uint8_t* rows = group + kScalesBytes;
  for (int64_t p = 0; p < kGroupK / 2; ++p) row(p, widen(rows + p * 32, d0, m0), widen(rows + p * 32 + 16, d1, m1));
}

template <int R, typename Out>
LLMAAS_Q4_TARGET void tile_q4_1(const uint16_t* x, int64_t ldx, const uint8_t* wt, int64_t k, Out* y, int64_t ldy,
                                int64_t cols, const float* bias) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < k / kGroupK; ++g)
    widen_group(wt + g * kGroupBytes, [&](int64_t p, __m512bh w0, __m512bh w1) LLMAAS_Q4_TARGET {
      const int64_t col = g * kGroupK + 2 * p;
      for (int r = 0; r < R; ++r) {
        uint32_t word;
        std::memcpy(&word, x + r * ldx + col, sizeof word);
        const __m512bh x_pair = (__m512bh)_mm512_set1_epi32(static_cast<int>(word));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], w0, x_pair);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], w1, x_pair);
      }
    });
  store_tile<R>(acc, y, ldy, cols, bias);
}

// The same widened rows into one packed tile chunk (16 pair rows of 128 bytes), multiplied on the AMX
// tiles as AmxBf16 multiplies linear_bf16's (linear_amx.h): the bits of that variant.
template <int R, typename Out>
LLMAAS_AMX_TARGET void tile_q4_1_amx(const uint16_t* x, int64_t ldx, const uint8_t* wt, int64_t k, Out* y,
                                     int64_t ldy, int64_t cols, const float* bias) {
  amx_configure(R);
  amx_zero<R>();
  alignas(64) uint16_t chunk[kGroupK / 2][2 * kTile];
  for (int64_t g = 0; g < k / kGroupK; ++g) {
    // (The widening's target, not the caller's: a lambda of a wider target would not be inlined.)
    widen_group(wt + g * kGroupBytes, [&](int64_t p, __m512bh w0, __m512bh w1) LLMAAS_Q4_TARGET {
      _mm512_store_si512(chunk[p], (__m512i)w0);
      _mm512_store_si512(chunk[p] + kTile, (__m512i)w1);
    });
    amx_step<R>(x + g * kGroupK, 2 * ldx, chunk);
  }
  amx_store_block<R>(y, ldy, cols, bias);
}
#undef LLMAAS_Q4_TARGET

using TileFn = void (*)(const uint16_t*, int64_t, const uint8_t*, int64_t, void*, int64_t, int64_t, const float*);

template <int R, typename Out, bool kAmx>
void tile_entry(const uint16_t* x, int64_t ldx, const uint8_t* wt, int64_t k, void* y, int64_t ldy, int64_t cols,
                const float* bias) {
  if constexpr (kAmx)
    tile_q4_1_amx<R, Out>(x, ldx, wt, k, static_cast<Out*>(y), ldy, cols, bias);
  else
    tile_q4_1<R, Out>(x, ldx, wt, k, static_cast<Out*>(y), ldy, cols, bias);
}

template <typename Out, bool kAmx, size_t... I>
constexpr std::array<TileFn, kQ4_1MaxRows> tile_table(std::index_sequence<I...>) {
  return {{&tile_entry<static_cast<int>(I) + 1, Out, kAmx>...}};
}

using Rows = std::make_index_sequence<kQ4_1MaxRows>;
// [amx][float32, bfloat16 output][rows - 1]
constexpr std::array<TileFn, kQ4_1MaxRows> kTiles[2][2] = {
    {tile_table<float, false>(Rows{}), tile_table<uint16_t, false>(Rows{})},
    {tile_table<float, true>(Rows{}), tile_table<uint16_t, true>(Rows{})},
};

}  // namespace

void linear_q4_1(const LinearArgs& a, bool amx) {
  if (a.w_q4_1 == nullptr || a.m < 1 || a.m > kQ4_1MaxRows || a.k % kGroupK)
    throw std::invalid_argument("linear_q4_1: invalid sizes");
  const int64_t tiles = (a.n + kTile - 1) / kTile, tile_bytes = a.k / kGroupK * kGroupBytes;
  const bool f32 = a.out_dtype == DType::kFloat32;
  const TileFn fn = kTiles[amx ? 1 : 0][f32 ? 0 : 1][a.m - 1];
  char* y = static_cast<char*>(a.y);
  const int64_t out_size = f32 ? 4 : 2;
  const bool parallel = tiles > 1 && a.m * a.n * a.k >= kMinParallelWork;
#pragma omp parallel num_threads(std::max(a.num_threads, 1)) if (parallel)
  {
#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t col0 = t * kTile;
      fn(a.x, a.x_row_stride, a.w_q4_1 + t * tile_bytes, a.k, y + col0 * out_size, a.y_row_stride,
         std::min(kTile, a.n - col0), a.bias != nullptr ? a.bias + col0 : nullptr);
    }
    if (amx) amx_release();
  }
}
#else
void linear_q4_1(const LinearArgs&, bool) { throw std::invalid_argument("linear_q4_1: needs x86-64 with avx512_bf16"); }
#endif

}  // namespace llmaas
