// Intel AMX (Advanced Matrix Extensions) tiles for the bf16 linear kernels (linear_amx.h,
// linear_q4_1.cpp): the CPU check, the tile configuration each thread loads, and its release.
//
// The tiles used, for a block of up to 32 rows of x by one 32-column tile of packed W:
//   tmm0..3  C (fp32), rows half h (rows 0-15, 16-31), columns half c (0-15, 16-31): tmm(2h + c)
//   tmm4, 5  A (bf16), x's rows half 0 and 1, 32 elements (16 k-pairs) of each
//   tmm6, 7  B (bf16), W's columns half 0 and 1: 16 k-pair rows of 16 (k, k+1) pairs, which are
//            the first and second 64 bytes of linear_bf16's 128-byte packed tile rows
// tdpbf16ps(C, A, B) accumulates into each C element the 16 pairs of its row of A and column of B
// in one fixed order, the same for every row: a row's output does not depend on how many rows
// share its tile, so the engine stays batch invariant. That order is not vdpbf16ps's (measured:
// 60% of outputs differ in the last bits), so a CPU uses one of the two for every batch size.
#pragma once

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include "isa_select.h"
#include "tile_store.h"

namespace llmaas {

// The kernels convert with avx512_bf16 too (every AMX CPU so far has it). Linux grants the 8 KiB
// of tile state per process, on request (arch_prctl ARCH_REQ_XCOMP_PERM).
inline bool cpu_has_amx_bf16() {
  static const bool ok = [] {
    if (!cpu_has_avx512_bf16()) return false;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24;
    if ((edx & kAmxBf16) == 0 || (edx & kAmxTile) == 0) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes per row of each tile
  uint8_t rows[16];
};

// Which configuration the calling thread's tiles hold, 0 when none: a kernel's key for it (the
// linear's: its rows; attend_amx.h's: kAttentionKey + rows). Each thread configures once per call,
// when its first block comes, and releases its tiles when the call ends (other code on the thread,
// oneDNN in torch, may configure them otherwise in between).
inline thread_local int g_amx_config = 0;

#define LLMAAS_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512bf16,avx512f,avx512bw,avx512vl,f16c")))

// GCC's tileloadd and ldtilecfg name no memory operand (or 8 bytes of it): without this compiler
// barrier, stores to what they read (a scratch tile, the config) could be deferred past them.
LLMAAS_AMX_TARGET __attribute__((always_inline)) inline void amx_fence() { __asm__ volatile("" ::: "memory"); }

LLMAAS_AMX_TARGET inline void amx_load_config(int key, const TileConfig& cfg) {
  amx_fence();
  _tile_loadconfig(&cfg);
  g_amx_config = key;
}

LLMAAS_AMX_TARGET inline void amx_configure(int rows) {
  if (g_amx_config == rows) return;
  TileConfig cfg{};
  cfg.palette_id = 1;
  const int half0 = std::min(rows, 16), half1 = rows - half0;
  const int c_rows[4] = {half0, half0, half1, half1};
  for (int t = 0; t < 4; ++t) {
    cfg.rows[t] = static_cast<uint8_t>(c_rows[t]);
    cfg.colsb[t] = c_rows[t] ? 64 : 0;
  }
  cfg.rows[4] = static_cast<uint8_t>(half0);
  cfg.colsb[4] = 64;
  cfg.rows[5] = static_cast<uint8_t>(half1);
  cfg.colsb[5] = half1 ? 64 : 0;
  for (int t = 6; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  amx_load_config(rows, cfg);
}

LLMAAS_AMX_TARGET inline void amx_release() {
  if (g_amx_config == 0) return;
  _tile_release();
  g_amx_config = 0;
}

// Loads a tile configuration of 1-row, 4-byte tiles without telling amx_configure: what another
// library leaves on a thread, for the tests that our kernels configure the tiles again.
LLMAAS_AMX_TARGET inline void amx_load_foreign_config() {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 1;
    cfg.colsb[t] = 4;
  }
  amx_fence();
  _tile_loadconfig(&cfg);
}

// Multiplies the A tiles loaded from x (`a`, rows lda bytes apart) by the B tiles of 16 packed
// pair rows (`b`, 128 bytes apart) into the C tiles; rows > 16 uses the second row half.
template <int R>
LLMAAS_AMX_TARGET __attribute__((always_inline)) inline void amx_step(const void* a, int64_t lda, const void* b) {
  amx_fence();
  _tile_loadd(6, b, 128);
  _tile_loadd(7, static_cast<const char*>(b) + 64, 128);
  _tile_loadd(4, a, lda);
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  if constexpr (R > 16) {
    _tile_loadd(5, static_cast<const char*>(a) + 16 * lda, lda);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
}

template <int R>
LLMAAS_AMX_TARGET __attribute__((always_inline)) inline void amx_zero() {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (R > 16) {
    _tile_zero(2);
    _tile_zero(3);
  }
}

// The C tiles of an R x 32 block into y, as store_tile writes the vdpbf16ps kernels' accumulators
// (the first `cols` columns, rows ldy elements apart, fp32 or rounded to bf16).
template <int R, typename Out>
LLMAAS_AMX_TARGET __attribute__((always_inline)) inline void amx_store_block(Out* y, int64_t ldy, int64_t cols,
                                                                             const float* bias) {
  alignas(64) float c[32][32];
  _tile_stored(0, c[0], 128);
  _tile_stored(1, c[0] + 16, 128);
  if constexpr (R > 16) {
    _tile_stored(2, c[16], 128);
    _tile_stored(3, c[16] + 16, 128);
  }
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) {
    acc[r][0] = _mm512_load_ps(c[r]);
    acc[r][1] = _mm512_load_ps(c[r] + 16);
  }
  store_tile<R>(acc, y, ldy, cols, bias);
}

}  // namespace llmaas
#endif
