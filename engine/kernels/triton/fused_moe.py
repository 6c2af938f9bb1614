"""Fused mixture-of-experts MLP: out[t] = sum_j weight[t, j] * down_e(silu(gate_e(x[t])) * up_e(x[t]))
over token t's top_k experts e = ids[t, j], with static shapes and no host sync, so a CUDA graph holds it.

Layout: x (T, H), unit last stride; w_gate_up (E, 2I, H) (gate rows, then up rows) and w_down (E, H, I),
unit last stride, x's dtype; weights (T, top_k) float32 and ids (T, top_k) int64 from
engine/kernels/moe.py route(). Output (T, H) in x's dtype.

Design, in three steps over the N = T * top_k (token, slot) pairs, numbered pair = token * top_k + slot:
1. align(), torch ops: the pairs sorted by expert (stable), each expert's run padded to a multiple of
   BLOCK_M. sorted_pairs (num_blocks * BLOCK_M,) int32 holds each padded row's pair (N on padding rows);
   block_expert (num_blocks,) int32 each block's expert (E on blocks past the last run). num_blocks is a
   host-side bound: each chosen expert pads at most BLOCK_M - 1 rows, and at most min(E, N) are chosen, so
   the padded rows number at most N + min(E, N) * (BLOCK_M - 1). Counting is a scatter_add, placing a
   sort, a cumsum and a searchsorted: nothing reads a device value on the host.
2. _expert_gemm_kernel, twice; one program per (block, BLOCK_N output columns) computes that block's
   BLOCK_M rows times its expert's weight tile, a K-loop in BLOCK_K steps, fp32 accumulation (tl.dot;
   "ieee" for fp32 inputs). Padding rows load zeros and store nothing; blocks past the real ones return.
   Axis 0 walks the blocks, so programs launched together share a weight tile where an expert has
   several blocks (prefill), which should then come from HBM once and from L2 after.
   - gate/up: rows gathered from x (token = pair // top_k). Two accumulators, columns n of gate and the
     same columns of up (rows I + n), so the epilogue writes silu(gate) * up, rounded once to x's dtype,
     into act (num_blocks * BLOCK_M, I) by padded row: the (.., 2I) product never reaches memory.
   - down: act's rows in order; the epilogue scales each row by its pair's routing weight and stores it
     in float32 at the pair's row of partial (N, H).
3. partial.view(T, top_k, H).sum(1): each token's top_k rows added in slot order, with no atomics, so
   a result does not depend on the schedule.
Traffic at decode: the chosen experts' weights once (the floor), x's rows, act and partial (small).
Reference: engine/kernels/moe.py reference() (token by token, float32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine.kernels.triton import next_pow2


@dataclass(frozen=True, slots=True)
class Tiles:
    block_m: int  # rows of one expert a program computes; the alignment's padding unit
    block_n: int  # output columns a program computes (of I for gate/up, each of gate and up; of H for down)
    block_k: int  # the K-loop's step over H (gate/up) or I (down)
    num_warps: int = 4
    num_stages: int = 3


def default_tiles(num_pairs: int, num_experts: int) -> Tiles:
    """BLOCK_M near the mean rows per expert. At 16 (decode: an expert holds a row or two, and the work
    is reading its weights) narrow, deep tiles, so that a few experts' columns still make enough programs
    to keep every SM streaming; larger BLOCK_M (prefill: the work is the matmul) square tiles. Not yet
    tuned on a GPU: bench/kernels/bench_moe_gpu.py sweeps the candidates."""
    block_m = min(64, max(16, next_pow2(num_pairs // num_experts)))
    if block_m == 16:
        return Tiles(16, 32, 128, num_warps=4, num_stages=4)
    return Tiles(block_m, 64, 64, num_warps=4 if block_m < 64 else 8, num_stages=3)


def padded_rows_bound(num_pairs: int, num_experts: int, block_m: int) -> int:
    """The most padded rows align() can produce, a multiple of block_m: every run rounded up."""
    return (num_pairs + min(num_experts, num_pairs) * (block_m - 1)) // block_m * block_m


def align(ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (T, top_k) -> (sorted_pairs (R,) int32, block_expert (R // block_m,) int32), R from
    padded_rows_bound: expert e's pairs, in pair order, fill blocks of block_m rows from
    padded_start[e]; padding rows hold N = T * top_k, blocks past the last run hold E."""
    flat = ids.reshape(-1)
    num_pairs, device = flat.numel(), flat.device
    num_rows = padded_rows_bound(num_pairs, num_experts, block_m)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_ends = torch.cumsum(padded, 0)  # (E,)
    # A pair's padded row: its expert's padded start + its rank among that expert's pairs.
    shift = (padded_ends - padded) - (torch.cumsum(counts, 0) - counts)  # (E,) padded start - unpadded start
    experts, order = torch.sort(flat, stable=True)
    rows = torch.arange(num_pairs, device=device) + shift[experts]
    sorted_pairs = torch.full((num_rows,), num_pairs, dtype=torch.int32, device=device)
    sorted_pairs.scatter_(0, rows, order.to(torch.int32))
    block_starts = torch.arange(0, num_rows, block_m, device=device)
    # The runs ending at or before a block's first row are the experts before its own.
    block_expert = torch.searchsorted(padded_ends, block_starts, right=True).to(torch.int32)
    return sorted_pairs, block_expert


@triton.jit
def _expert_gemm_kernel(
    a_ptr, w_ptr, out_ptr, sorted_pairs_ptr, block_expert_ptr, route_weights_ptr,
    num_pairs, n_out, k_dim, a_stride, w_stride_e, w_stride_n, out_stride,
    NUM_EXPERTS: tl.constexpr, TOP_K: tl.constexpr, GATE_UP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """GATE_UP: act[row, n] = silu(x[token] . w[e, n]) * (x[token] . w[e, n_out + n]).
    Otherwise: partial[pair, n] = weight[pair] * (act[row] . w[e, n])."""
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert >= NUM_EXPERTS:  # past the last expert's run
        return
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # padded rows
    pairs = tl.load(sorted_pairs_ptr + rows)
    row_mask = pairs < num_pairs
    if GATE_UP:
        a_rows = pairs // TOP_K  # the pair's token: rows gathered from x
    else:
        a_rows = rows  # act is already in padded-row order
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_out
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows.to(tl.int64)[:, None] * a_stride + offs_k[None, :]  # (BLOCK_M, BLOCK_K)
    w_ptrs = (w_ptr + expert.to(tl.int64) * w_stride_e + offs_n.to(tl.int64)[None, :] * w_stride_n
              + offs_k[:, None])  # (BLOCK_K, BLOCK_N): the weight rows' K-slices, transposed
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        k_mask = offs_k < k_dim - k0
        a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & n_mask[None, :]
        acc = tl.dot(a, tl.load(w_ptrs, mask=w_mask, other=0.0), acc, input_precision=PRECISION)
        if GATE_UP:
            w_up = tl.load(w_ptrs + n_out * w_stride_n, mask=w_mask, other=0.0)
            acc_up = tl.dot(a, w_up, acc_up, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    out_mask = row_mask[:, None] & n_mask[None, :]
    if GATE_UP:
        out = acc / (1.0 + tl.exp(-acc)) * acc_up
        out_rows = rows
    else:
        out = acc * tl.load(route_weights_ptr + pairs, mask=row_mask, other=0.0)[:, None]
        out_rows = pairs
    tl.store(out_ptr + out_rows.to(tl.int64)[:, None] * out_stride + offs_n[None, :],
             out.to(out_ptr.dtype.element_ty), mask=out_mask)


def _expert_gemm(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, n_out: int, sorted_pairs: torch.Tensor,
                 block_expert: torch.Tensor, route_weights: torch.Tensor, top_k: int, gate_up: bool,
                 tiles: Tiles) -> None:
    assert a.stride(-1) == 1 and w.stride(-1) == 1 and out.stride(-1) == 1
    grid = (block_expert.numel(), triton.cdiv(n_out, tiles.block_n))
    _expert_gemm_kernel[grid](
        a, w, out, sorted_pairs, block_expert, route_weights,
        route_weights.numel(), n_out, a.shape[1], a.stride(0), w.stride(0), w.stride(1), out.stride(0),
        NUM_EXPERTS=w.shape[0], TOP_K=top_k, GATE_UP=gate_up,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


def fused_moe(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
              ids: torch.Tensor, tiles: Tiles | None = None) -> torch.Tensor:
    """x (T, H), w_gate_up (E, 2I, H), w_down (E, H, I), weights (T, top_k) float32, ids (T, top_k)
    int64 -> (T, H) in x's dtype. Graph-safe: every shape and launch grid follows from T, top_k, E."""
    num_tokens, hidden = x.shape
    num_experts, two_inter, _ = w_gate_up.shape
    inter = two_inter // 2
    top_k = ids.shape[1]
    assert w_gate_up.shape == (num_experts, 2 * inter, hidden) and w_down.shape == (num_experts, hidden, inter)
    assert x.dtype == w_gate_up.dtype == w_down.dtype and weights.shape == ids.shape
    if num_tokens == 0:
        return x.new_zeros(0, hidden)
    tiles = tiles or default_tiles(num_tokens * top_k, num_experts)
    sorted_pairs, block_expert = align(ids, num_experts, tiles.block_m)
    route_weights = weights.reshape(-1).to(torch.float32).contiguous()  # (N,) by pair
    act = torch.empty(sorted_pairs.numel(), inter, dtype=x.dtype, device=x.device)  # (R, I), by padded row
    _expert_gemm(x, w_gate_up, act, inter, sorted_pairs, block_expert, route_weights, top_k, True, tiles)
    partial = torch.empty(num_tokens * top_k, hidden, dtype=torch.float32, device=x.device)  # (N, H), by pair
    _expert_gemm(act, w_down, partial, hidden, sorted_pairs, block_expert, route_weights, top_k, False, tiles)
    return partial.view(num_tokens, top_k, hidden).sum(1).to(x.dtype)
