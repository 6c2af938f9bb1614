// A second form of a bf16 linear's weight: the GGUF's own Q4_1 blocks (csrc/cpu/linear_q4_1.cpp).
//
// Why: a decode step of one or a few sequences reads every weight once from DRAM, so its time is
// bytes / bandwidth. SmolLM2's GGUF stores its layers in Q4_1 (0.625 bytes a weight, 2 for bf16).
// The kernel reads those blocks and widens them in registers to the very bf16 values the loader's
// dequantisation gives (bf16(d * q + m), see the .cpp), then runs the bf16 kernel's vdpbf16ps
// sequence (or its AMX tiles), so its outputs are the bf16 kernel's bit for bit: a sequence's tokens do not depend on
// which of the two forms its step's batch size picked.
#pragma once

#include <cstdint>

#include "linear_bf16.h"

namespace llmaas {

// Rows (tokens) up to which linear_bf16 uses a weight's Q4_1 form when it has one; above, the
// widening costs more than the bytes it saves (bench/RESULTS.md, 2026-11-28).
constexpr int64_t kQ4_1MaxRows = 4;
// Bytes of one Q4_1 block of 32 weights in a GGUF file: d fp16 | m fp16 | 16 bytes of nibbles.
constexpr int64_t kQ4_1BlockBytes = 20;

// Bytes pack_linear_weight_q4_1 writes for a weight (n, k): ceil(n / 32) * (k / 32) * 640.
int64_t packed_q4_1_bytes(int64_t n, int64_t k);

// Packs W (n, k), given as GGUF Q4_1 blocks (n rows of k / 32 blocks, 20 bytes each, rows
// contiguous), into `packed` (see the layout in linear_q4_1.cpp). k must be a multiple of 32.
void pack_linear_weight_q4_1(const uint8_t* blocks, uint8_t* packed, int64_t n, int64_t k, int num_threads);

// Whether the CPU and the selected linear variant run the Q4_1 kernel (amx_bf16 and avx512_bf16).
bool linear_q4_1_available();

// y = x @ W^T from the packed Q4_1 form in args.w_q4_1, for args.m <= kQ4_1MaxRows; the same bits
// as linear_bf16 on the bf16 form of the same weight, with the amx_bf16 variant if `amx` (its
// multiply-adds on AMX tiles), else avx512_bf16. Called by linear_bf16.
void linear_q4_1(const LinearArgs& args, bool amx);

}  // namespace llmaas
