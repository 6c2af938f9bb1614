// bf16 linear layer y = x @ W^T on CPU, products accumulated in fp32.
//
// Data layout
//   W   (N, K) bf16, packed once at load time into tiles of T = 32 output features:
//         packed[t][p][c][j] = W[T*t + c][2*p + j],   zero past N and K.
//       Tile row p, 32 (k, k+1) pairs = 128 bytes, is the two 512-bit vectors that
//       vdpbf16ps multiplies by one broadcast pair of x. Tiles follow each other,
//       so the tiles a thread owns are one contiguous stretch of memory.
//   x   (M, K) bf16, strided rows, read in place: the kernel broadcasts a row's
//       (k, k+1) pair as one 32-bit word. (Packing x into a pair-major copy cost
//       up to 10% at M = 32, for the copy and the barrier after it.)
//   y   (M, N) fp32 or bf16, strided rows.
//
// Design
//   The microkernel computes an R x 32 block of y over the whole K: per pair it
//   loads the tile row and, for each of the R rows, broadcasts the row's x pair
//   into 2 vdpbf16ps (32 multiply-adds each). R = 12 gives 24 accumulators, enough
//   to hide the instruction's latency (R = 8 to 14 measured alike, ~220 GFLOPS a
//   Zen 4 core, its peak). Every R sums K in the same order, so a row's output is
//   the same bits in any batch (a sequence's tokens do not change with its
//   step's batch size, nor with a prefix-cache hit). With 1 to 3 rows the few
//   dependency chains cost up to 30% on an L3-resident matrix, nothing on the
//   model's decode, which streams its weights from DRAM (2026-11-27 notes in
//   bench/RESULTS.md); splitting K into even and odd pairs was faster there
//   but rounded such rows differently.
//   Threads split the grid (tile, row block), tile-major, into contiguous chunks.
//   At M = 1 each thread streams its share of W once, front to back: decode is
//   bound by memory bandwidth, and the hardware prefetchers keep up with such a
//   stream (software prefetch measured no faster). At larger M a tile (64 * K
//   bytes) stays in L2 while every row block passes over it, and x is read from
//   L2 or L3 once per tile, so vdpbf16ps throughput is the bound; with only a
//   few row blocks (decode batches) the first block's pass over a tile also
//   prefetches the next tile into L2, else it waits on DRAM. Row blocks
//   are made nearly equal (M = 32 gives 11, 11, 10, not 12, 12, 8).
//   On a CPU with AMX the same layouts feed tdpbf16ps instead (linear_amx.h): 32-row blocks, 4-7x
//   the vdpbf16ps kernel's speed from 32 rows up, as fast at 1 row (its Q4_1 form 3-10% slower). The
//   two round differently, so the AMX variant runs every M there, and the Q4_1 kernel has an AMX form. Rows of x are
//   taken in groups of up to kGroupBytes, every tile passing over one group before the next: at
//   long prompts x outgrows L2, and each tile would stream all of it from L3 again.
//   Without avx512_bf16 the same layouts feed an fp32 FMA kernel, written once
//   against vec.h's vector types for AVX-512, AVX2 and the x86-64-v2 baseline: a
//   pair word yields its even element by a 16-bit shift and its odd one by masking
//   the low half, so W is widened in registers and never stored as fp32.
#include "linear_bf16.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "bf16.h"
#include "isa_select.h"
#include "linear_amx.h"
#include "linear_q4_1.h"
#include "tile_store.h"
#include "vec.h"

namespace llmaas {
namespace {

constexpr int64_t kTile = kLinearTileN;
constexpr int kMaxRows = 32;  // the most rows any variant's microkernel takes (AMX's)
// Multiply-adds below which waking the thread team costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 17;
// Row blocks up to which a tile's first pass prefetches the next tile: measured 4-10% faster at
// M = 32 (3 blocks), 2-4% slower at M = 128 and 512, where each tile's read is amortised anyway.
constexpr int64_t kMaxPrefetchBlocks = 4;
// Bytes of x's rows that a thread's tiles pass over before going on to the next rows.
constexpr int64_t kGroupBytes = int64_t{512} << 10;

// Computes y[r][c] for r < R, c < cols (<= kTile) from R rows of x and one tile
// of packed W; x and y point at the block's first row, rows ldx and ldy apart.
// next_wt: a tile to pull into the cache meanwhile (the next one this thread will use), or null;
// bias: the tile's cols fp32 values added to each row before it is stored, or null.
using TileFn = void (*)(const uint16_t* x, int64_t ldx, const uint16_t* wt, int64_t k, void* y, int64_t ldy,
                        int64_t cols, const uint16_t* next_wt, const float* bias);

// Runs step(w_row, pair) over the pairs of K, in order: w_row is the tile's row
// of the pair, pair(r) the 32-bit word (x[r][2p], x[r][2p+1]). For odd K the
// last word's high half is zero, so no element past a row is read (the next row,
// or unmapped memory).
template <typename Step>
LLMAAS_INLINE void for_each_pair(const uint16_t* x, int64_t ldx, const uint16_t* wt, int64_t k, Step step) {
  auto whole_pair = [x, ldx](int64_t p) {
    return [x, ldx, p](int r) {
      uint32_t word;
      std::memcpy(&word, x + r * ldx + 2 * p, sizeof word);
      return word;
    };
  };
  const int64_t whole = k / 2;
  for (int64_t p = 0; p < whole; ++p) step(wt + p * 2 * kTile, whole_pair(p));
  if (k % 2) step(wt + whole * 2 * kTile, [x, ldx, k](int r) { return uint32_t{x[r * ldx + k - 1]}; });
}

// ---- fp32 FMA microkernel (no avx512_bf16) ----------------------------------

template <typename V, int R, typename Out>
LLMAAS_INLINE void tile_fma(const uint16_t* x, int64_t ldx, const uint16_t* wt, int64_t k, Out* y, int64_t ldy,
                            int64_t cols, const float* bias) {
  using VI = typename Simd<kLanesOf<V>>::I;
  constexpr int64_t kW = kLanesOf<V>, kNV = kTile / kW;
  V acc[R][kNV] = {};
  for_each_pair(x, ldx, wt, k, [&](const uint16_t* w_row, auto pair) {
    for (int64_t v = 0; v < kNV; ++v) {
      VI w;
      std::memcpy(&w, w_row + 2 * kW * v, sizeof w);
      const V even = (V)(w << 16), odd = (V)(w & (VI{} + static_cast<int32_t>(0xffff0000u)));
      for (int r = 0; r < R; ++r) {
        acc[r][v] += even * bf16_to_f32(static_cast<uint16_t>(pair(r)));
        acc[r][v] += odd * bf16_to_f32(static_cast<uint16_t>(pair(r) >> 16));
      }
    }
  });
  for (int r = 0; r < R; ++r) {
    float row[kTile];  // spilled here so that acc, indexed by constants only, stays in registers
    for (int64_t v = 0; v < kNV; ++v) store_vec(row + v * kW, acc[r][v]);
    for (int64_t c = 0; c < cols; ++c) {
      const float value = bias != nullptr ? row[c] + bias[c] : row[c];
      if constexpr (sizeof(Out) == 4)
        y[r * ldy + c] = value;
      else
        y[r * ldy + c] = f32_to_bf16(value);
    }
  }
}

// Rows per block such that accumulators, widened W and broadcasts fit the
// register file (32 vector registers with AVX-512, 16 below).
#define LLMAAS_FMA_VARIANT(name, target_attribute, width, rows)                                         \
  struct name {                                                                                          \
    static constexpr int kMaxRows = rows;                                                                \
    template <int R, typename Out>                                                                       \
    target_attribute static void tile(const uint16_t* x, int64_t ldx, const uint16_t* wt, int64_t k,     \
                                      void* y, int64_t ldy, int64_t cols, const uint16_t*,               \
                                      const float* bias) {                                               \
      tile_fma<Simd<width>::F, R>(x, ldx, wt, k, static_cast<Out*>(y), ldy, cols, bias);                 \
    }                                                                                                    \
  };
#if defined(__x86_64__)
LLMAAS_FMA_VARIANT(Avx512Fma, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))), 16, 6)
LLMAAS_FMA_VARIANT(Avx2Fma, __attribute__((target("avx2,fma"))), 8, 2)
#endif
LLMAAS_FMA_VARIANT(BaselineFma, , 4, 1)
#undef LLMAAS_FMA_VARIANT

// ---- vdpbf16ps microkernel ---------------------------------------------------

#if defined(__x86_64__)
#define LLMAAS_BF16_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl")))

struct Avx512Bf16 {
  static constexpr int kMaxRows = 12;

  template <int R, typename Out>
  LLMAAS_BF16_TARGET static void tile(const uint16_t* x, int64_t ldx, const uint16_t* wt, int64_t k, void* y_void,
                                      int64_t ldy, int64_t cols, const uint16_t* next_wt, const float* bias) {
    // One accumulator per row and half-tile, K summed in one order for every R: see the header.
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for_each_pair(x, ldx, wt, k, [&](const uint16_t* w_row, auto pair) LLMAAS_BF16_TARGET {
      if (next_wt != nullptr) {  // the same row of the next tile, into L2 (its two 64-byte lines)
        const char* ahead = reinterpret_cast<const char*>(next_wt + (w_row - wt));
        _mm_prefetch(ahead, _MM_HINT_T1);
        _mm_prefetch(ahead + 64, _MM_HINT_T1);
      }
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w_row);
      const __m512bh w1 = (__m512bh)_mm512_loadu_si512(w_row + 32);
      for (int r = 0; r < R; ++r) {
        const __m512bh x_pair = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair(r)));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], w0, x_pair);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], w1, x_pair);
      }
    });

    store_tile<R>(acc, static_cast<Out*>(y_void), ldy, cols, bias);
  }
};
#undef LLMAAS_BF16_TARGET
#endif

// ---- dispatch ---------------------------------------------------------------

using TileTable = std::array<TileFn, kMaxRows>;  // [rows - 1], null past the variant's kMaxRows

template <class Kernel, typename Out, size_t... I>
constexpr TileTable tile_table(std::index_sequence<I...>) {
  return {{&Kernel::template tile<static_cast<int>(I) + 1, Out>...}};
}

struct IsaVariant {
  const char* name;
  bool (*supported)();
  int max_rows;
  TileTable tiles[2];  // [float32, bfloat16 output]
  void (*thread_done)();  // what each thread runs after its last tile of a call (AMX: release), or null
};

// Kernel::thread_done if the kernel has one, else null.
template <class Kernel, class = void>
constexpr void (*kThreadDone)() = nullptr;
template <class Kernel>
constexpr void (*kThreadDone<Kernel, std::void_t<decltype(&Kernel::thread_done)>>)() = &Kernel::thread_done;

template <class Kernel>
constexpr IsaVariant variant(const char* name, bool (*supported)()) {
  using Rows = std::make_index_sequence<Kernel::kMaxRows>;
  return {name, supported, Kernel::kMaxRows, {tile_table<Kernel, float>(Rows{}), tile_table<Kernel, uint16_t>(Rows{})},
          kThreadDone<Kernel>};
}

// Best first.
const IsaVariant kVariants[] = {
#if defined(__x86_64__)
    variant<AmxBf16>("amx_bf16", cpu_has_amx_bf16),
    variant<Avx512Bf16>("avx512_bf16", cpu_has_avx512_bf16),
    variant<Avx512Fma>("avx512", cpu_has_avx512),
    variant<Avx2Fma>("avx2", cpu_has_avx2),
#endif
    variant<BaselineFma>("baseline", [] { return true; }),
};

IsaSelector g_isa(kVariants);

// The Q4_1 kernel (linear_q4_1.cpp) is written for amx_bf16 and avx512_bf16, the first two variants
// on x86-64.
bool runs_q4_1(const IsaVariant* variant) {
#if defined(__x86_64__)
  return variant == &kVariants[0] || variant == &kVariants[1];
#else
  (void)variant;
  return false;
#endif
}

}  // namespace

void pack_linear_weight(const uint16_t* w, uint16_t* packed, int64_t n, int64_t k, int64_t w_row_stride,
                        int num_threads) {
  if (n <= 0 || k <= 0 || w_row_stride < k) throw std::invalid_argument("pack_linear_weight: invalid sizes");
  const int64_t tiles = (n + kTile - 1) / kTile, pairs = (k + 1) / 2;
#pragma omp parallel for num_threads(std::max(num_threads, 1)) if (n * k >= kMinParallelWork)
  for (int64_t t = 0; t < tiles; ++t) {
    uint16_t* dst = packed + t * pairs * 2 * kTile;
    for (int64_t p = 0; p < pairs; ++p)
      for (int64_t c = 0; c < kTile; ++c)
        for (int64_t j = 0; j < 2; ++j) {
          const int64_t row = t * kTile + c, col = 2 * p + j;
          dst[(p * kTile + c) * 2 + j] = row < n && col < k ? w[row * w_row_stride + col] : uint16_t{0};
        }
  }
}

void linear_bf16(const LinearArgs& a) {
  if (a.m < 0 || a.n <= 0 || a.k <= 0 || (a.m > 1 && a.x_row_stride < a.k) || (a.m > 1 && a.y_row_stride < a.n))
    throw std::invalid_argument("linear_bf16: invalid sizes");
  if (a.m == 0) return;
  const IsaVariant* variant = g_isa.current();
  if (a.w_q4_1 != nullptr && a.m <= kQ4_1MaxRows && runs_q4_1(variant)) return linear_q4_1(a, variant == &kVariants[0]);
  const int64_t pairs = (a.k + 1) / 2, tiles = (a.n + kTile - 1) / kTile;
  // ceil(m / max_rows) blocks; the first `extra` get one row more than the others.
  const int64_t blocks = (a.m + variant->max_rows - 1) / variant->max_rows;
  const int64_t base_rows = a.m / blocks, extra = a.m % blocks;
  auto block_row0 = [&](int64_t b) { return b * base_rows + std::min(b, extra); };
  const TileTable& tile_fns = variant->tiles[a.out_dtype == DType::kFloat32 ? 0 : 1];
  const int64_t out_size = a.out_dtype == DType::kFloat32 ? 4 : 2;
  char* y = static_cast<char*>(a.y);
  const int threads = std::max(a.num_threads, 1);
  const bool parallel = blocks * tiles > 1 && a.m * a.n * a.k >= kMinParallelWork;
  // Row blocks in groups whose rows of x stay in L2 while every tile of W passes over them.
  // Groups of nearly equal size, so that the threads' shares of (group, tile) units are too.
  const int64_t fitting_blocks = std::max<int64_t>(1, kGroupBytes / (variant->max_rows * a.k * 2));
  const int64_t groups = (blocks + fitting_blocks - 1) / fitting_blocks;
  const int64_t group_blocks = (blocks + groups - 1) / groups;
#pragma omp parallel num_threads(threads) if (parallel)
  {
#pragma omp for schedule(static) collapse(2) nowait
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t t = 0; t < tiles; ++t)
        for (int64_t b = g * group_blocks; b < std::min(blocks, (g + 1) * group_blocks); ++b) {
          const int64_t row0 = block_row0(b), rows = block_row0(b + 1) - row0, col0 = t * kTile;
          // With a few row blocks (a decode batch), the first pass over a tile brings in the next
          // tile, so that the blocks after it (computing from L2) overlap the next tile's DRAM read.
          const bool prefetch = blocks > 1 && blocks <= kMaxPrefetchBlocks && b == 0 && t + 1 < tiles;
          const uint16_t* next_wt = prefetch ? a.w_packed + (t + 1) * pairs * 2 * kTile : nullptr;
          tile_fns[rows - 1](a.x + row0 * a.x_row_stride, a.x_row_stride, a.w_packed + t * pairs * 2 * kTile, a.k,
                             y + (row0 * a.y_row_stride + col0) * out_size, a.y_row_stride,
                             std::min(kTile, a.n - col0), next_wt, a.bias != nullptr ? a.bias + col0 : nullptr);
        }
    if (variant->thread_done != nullptr) variant->thread_done();
  }
}

void linear_bf16_grouped(const GroupedLinearArgs& a) {
  if (a.groups < 0 || a.n <= 0 || a.k <= 0 || a.x_row_stride < a.k || a.y_row_stride < a.n)
    throw std::invalid_argument("linear_bf16_grouped: invalid sizes");
  if (a.groups == 0) return;
  const IsaVariant* variant = g_isa.current();
  const int64_t pairs = (a.k + 1) / 2, tiles = (a.n + kTile - 1) / kTile, tile_elems = pairs * 2 * kTile;
  // Each group's (tile, row block) units, numbered group after group: unit_starts[g] is its first.
  std::vector<int64_t> unit_starts(a.groups + 1, 0);
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t m = a.row_starts[g + 1] - a.row_starts[g];
    if (m < 0 || a.row_starts[g] < 0) throw std::invalid_argument("linear_bf16_grouped: row_starts must not decrease");
    unit_starts[g + 1] = unit_starts[g] + tiles * ((m + variant->max_rows - 1) / variant->max_rows);
  }
  const int64_t units = unit_starts[a.groups];
  const TileTable& tile_fns = variant->tiles[a.out_dtype == DType::kFloat32 ? 0 : 1];
  const int64_t out_size = a.out_dtype == DType::kFloat32 ? 4 : 2;
  char* y = static_cast<char*>(a.y);
  const int64_t rows_total = a.row_starts[a.groups] - a.row_starts[0];
  const bool parallel = units > 1 && rows_total * a.n * a.k >= kMinParallelWork;
#pragma omp parallel num_threads(std::max(a.num_threads, 1)) if (parallel)
  {
#pragma omp for schedule(static) nowait
    for (int64_t u = 0; u < units; ++u) {
      const int64_t g = std::upper_bound(unit_starts.begin(), unit_starts.end(), u) - unit_starts.begin() - 1;
      const int64_t m = a.row_starts[g + 1] - a.row_starts[g];
      // Row blocks as linear_bf16 makes them, so that each row's output is the same bits.
      const int64_t blocks = (m + variant->max_rows - 1) / variant->max_rows;
      const int64_t base_rows = m / blocks, extra = m % blocks;
      const int64_t t = (u - unit_starts[g]) / blocks, b = (u - unit_starts[g]) % blocks;
      const int64_t row0 = a.row_starts[g] + b * base_rows + std::min(b, extra);
      const int64_t rows = base_rows + (b < extra ? 1 : 0), col0 = t * kTile;
      const bool prefetch = blocks > 1 && blocks <= kMaxPrefetchBlocks && b == 0 && t + 1 < tiles;
      const uint16_t* wt = a.w_packed[g] + t * tile_elems;
      tile_fns[rows - 1](a.x + row0 * a.x_row_stride, a.x_row_stride, wt, a.k,
                         y + (row0 * a.y_row_stride + col0) * out_size, a.y_row_stride, std::min(kTile, a.n - col0),
                         prefetch ? wt + tile_elems : nullptr, nullptr);
    }
    if (variant->thread_done != nullptr) variant->thread_done();
  }
}

void gather_packed_rows(const uint16_t* packed, int64_t n, int64_t k, const int64_t* ids, int64_t count,
                        uint16_t* out, int64_t out_row_stride) {
  if (n <= 0 || k <= 0 || count < 0 || (count > 1 && out_row_stride < k))
    throw std::invalid_argument("gather_packed_rows: invalid sizes");
  const int64_t pairs = (k + 1) / 2;
  for (int64_t i = 0; i < count; ++i)
    if (ids[i] < 0 || ids[i] >= n) throw std::invalid_argument("gather_packed_rows: id out of range");
  for (int64_t i = 0; i < count; ++i) {
    // Row r is column r % 32 of tile r / 32: its (k, k+1) pairs are 32 pairs apart.
    const uint16_t* tile = packed + ids[i] / kTile * pairs * 2 * kTile + ids[i] % kTile * 2;
    uint16_t* dst = out + i * out_row_stride;
    for (int64_t p = 0; p < k / 2; ++p) std::memcpy(dst + 2 * p, tile + p * 2 * kTile, 2 * sizeof(uint16_t));
    if (k % 2) dst[k - 1] = tile[(pairs - 1) * 2 * kTile];
  }
}

bool linear_q4_1_available() { return runs_q4_1(g_isa.current()); }

std::vector<std::string> supported_linear_isas() { return g_isa.supported_names(); }

std::string linear_isa() { return g_isa.current()->name; }

void set_linear_isa(const std::string& isa) { g_isa.select(isa); }

}  // namespace llmaas
