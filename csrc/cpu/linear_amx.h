// The AMX variant of the bf16 linear kernel, one entry of linear_bf16.cpp's variant table.
//
// It reads the same packed W as the vdpbf16ps kernel: a packed tile's 16 consecutive pair rows
// (2 KiB) are two B tiles, its columns 0-15 and 16-31, rows 128 bytes apart; x's rows are loaded
// as A tiles in place, 64 bytes (32 elements of k) each. A call computes an R x 32 block of y, R
// up to 32, as 2 x 2 C tiles over the whole K, 32 elements at a time (amx.h). Rows and columns
// past the block are neither read nor written; the last k % 32 elements, if any, go through a
// zero-padded copy (x's row, and the last W tile, may end there).
//
// The engine keeps a row's output bits independent of its batch; since tdpbf16ps and vdpbf16ps
// round differently, a CPU with AMX takes this kernel at every M, decode included, which streams
// W through tile loads as fast as through vector loads (bench/RESULTS.md, 2026-11-28).
#pragma once

#if defined(__x86_64__)
#include <cstdint>
#include <cstring>

#include "amx.h"
#include "linear_bf16.h"

namespace llmaas {

struct AmxBf16 {
  static constexpr int kMaxRows = 32;

  template <int R, typename Out>
  LLMAAS_AMX_TARGET static void tile(const uint16_t* x, int64_t ldx, const uint16_t* wt, int64_t k, void* y,
                                     int64_t ldy, int64_t cols, const uint16_t*, const float* bias) {
    constexpr int64_t kPairRow = 2 * kLinearTileN;  // elements of a packed tile row
    amx_configure(R);
    amx_zero<R>();
    const int64_t chunks = k / 32;
    for (int64_t c = 0; c < chunks; ++c) amx_step<R>(x + 32 * c, 2 * ldx, wt + 16 * kPairRow * c);
    if (const int64_t rest = k - 32 * chunks; rest > 0) {
      alignas(64) uint16_t a[R][32] = {};
      alignas(64) uint16_t b[16][kPairRow] = {};
      for (int r = 0; r < R; ++r) std::memcpy(a[r], x + r * ldx + 32 * chunks, rest * sizeof(uint16_t));
      std::memcpy(b, wt + 16 * kPairRow * chunks, (rest + 1) / 2 * kPairRow * sizeof(uint16_t));
      amx_step<R>(a, sizeof a[0], b);
    }
    amx_store_block<R>(static_cast<Out*>(y), ldy, cols, bias);
  }

  static void thread_done() { amx_release(); }
};

}  // namespace llmaas
#endif
