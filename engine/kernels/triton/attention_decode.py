"""Paged-attention decode (one query token per sequence), flash-decoding style.

Layout: query (num_seqs, num_heads, head_dim), any token/head strides, unit last stride;
k_cache/v_cache (num_blocks, block_size, num_kv_heads, head_dim) contiguous; block_tables
(num_seqs, max_blocks) int32; context_lens (num_seqs,) int32 (tokens in the cache, the query's
own included). Output (num_seqs, num_heads, head_dim) in query's dtype.

Design: one program per (sequence, kv head, split). A program loads the GROUP query heads that
share its kv head as one (BLOCK_G, D) tile, so every K/V byte is read once for the whole group
(GQA), and walks its split's slice of the context in tiles of BLOCK_N tokens, gathering each
token's page from the block table; scores and the weighted sum are tensor-core dots with fp32
accumulation and an online softmax. Long contexts are cut into `num_splits` partitions so a small
batch still fills the GPU; each split writes an unnormalised partial (acc, running max m, sum l)
and a second kernel merges the splits:
    out = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s,  M = max_s m_s.
With one split the first kernel normalises and writes the output directly. Splits beyond a
sequence's context write m = -inf, l = 0 and drop out of the merge, so the grid can be sized from
a host-side bound (max_context_len) without reading device lengths: CUDA-graph safe.
Sliding window W > 0 (local attention): the query at position ctx - 1 sees keys ctx - W .. ctx - 1,
so the splits tile only those min(ctx, W) keys, starting at the first of them; no key before the
window is read, and the grid is planned from min(max_context_len, W).
Reference: engine/kernels/reference.py paged_attention (q_len = 1 rows).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.triton import next_pow2


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, acc_ptr, m_ptr, l_ptr,
    scale, partition, num_heads, num_splits, window,
    q_stride_t, q_stride_h, c_stride_b, c_stride_s, c_stride_h, table_stride,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(lens_ptr + seq)
    first = tl.where(window > 0, tl.maximum(ctx - window, 0), 0)  # the window's first key
    start = first + split * partition
    end = tl.minimum(start + partition, ctx)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + seq.to(tl.int64) * q_stride_t + heads[:, None] * q_stride_h + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        page = tl.load(tables_ptr + seq.to(tl.int64) * table_stride + offs_n // BLOCK_SIZE, mask=n_mask, other=0)
        row = page.to(tl.int64) * c_stride_b + (offs_n % BLOCK_SIZE) * c_stride_s + kv_head * c_stride_h
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (BLOCK_G, BLOCK_N) fp32
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        v = tl.load(v_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    out_mask = g_mask[:, None] & d_mask[None, :]
    if SINGLE:  # one split: normalise and write the output directly
        out = acc / l_i[:, None]
        tl.store(out_ptr + (seq.to(tl.int64) * num_heads + heads[:, None]) * HEAD_DIM + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        part = (seq.to(tl.int64) * num_heads + heads) * num_splits + split  # (BLOCK_G,)
        tl.store(acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=out_mask)
        tl.store(m_ptr + part, m_i, mask=g_mask)
        tl.store(l_ptr + part, l_i, mask=g_mask)


@triton.jit
def _merge_kernel(out_ptr, acc_ptr, m_ptr, l_ptr, num_splits, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_S: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # seq * num_heads + head
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    d_mask = offs_d < HEAD_DIM
    m = tl.load(m_ptr + row * num_splits + offs_s, mask=s_mask, other=float("-inf"))
    l = tl.load(l_ptr + row * num_splits + offs_s, mask=s_mask, other=0.0)
    weight = tl.exp(m - tl.max(m, 0))  # empty splits: exp(-inf) = 0
    acc = tl.load(acc_ptr + (row * num_splits + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                  mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    out = tl.sum(acc * weight[:, None], 0) / tl.sum(l * weight, 0)
    tl.store(out_ptr + row * HEAD_DIM + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def attended_len(max_context_len: int, sliding_window: int) -> int:
    """The most keys one decode query attends: its context, or the last sliding_window of it."""
    return min(max_context_len, sliding_window) if sliding_window > 0 else max_context_len


def plan_splits(num_seqs: int, num_kv_heads: int, max_context_len: int, block_n: int,
                target_programs: int = 264, sliding_window: int = 0) -> tuple[int, int]:
    """(num_splits, partition tokens): enough programs to fill ~132 SMs twice over, each split at
    least one BLOCK_N tile, the splits covering the attended keys (the window's, if any). Depends
    only on host-side sizes, so a captured graph keeps it."""
    keys = attended_len(max_context_len, sliding_window)
    tiles = max(1, -(-keys // block_n))
    splits = max(1, min(tiles, -(-target_programs // max(1, num_seqs * num_kv_heads)), 64))
    partition = -(-tiles // splits) * block_n
    return -(-keys // partition), partition


def decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, max_context_len: int,
                     out: torch.Tensor | None = None, block_n: int | None = None,
                     num_splits: int | None = None, sliding_window: int = 0) -> torch.Tensor:
    """Attention of one query token per sequence over its paged context, or its last sliding_window
    keys when > 0 (see the module comment)."""
    num_seqs, num_heads, head_dim = query.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and query.stride(-1) == 1
    assert block_tables.dtype == torch.int32 and context_lens.dtype == torch.int32
    group = num_heads // num_kv_heads
    if block_n is None:  # fp32 tiles take twice the shared memory: halve them for large heads
        block_n = 64 if query.element_size() <= 2 or head_dim <= 128 else 32
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    assert out.is_contiguous() and out.shape == query.shape
    if num_splits is None:
        num_splits, partition = plan_splits(num_seqs, num_kv_heads, max_context_len, block_n,
                                            sliding_window=sliding_window)
    else:
        keys = attended_len(max_context_len, sliding_window)
        partition = -(-max(1, -(-keys // num_splits)) // block_n) * block_n
    block_d = next_pow2(head_dim)
    precision = "ieee" if query.dtype == torch.float32 else "tf32"
    if num_splits > 1:
        parts = (num_seqs, num_heads, num_splits)
        acc = torch.empty(*parts, head_dim, dtype=torch.float32, device=query.device)
        m = torch.empty(parts, dtype=torch.float32, device=query.device)
        l = torch.empty(parts, dtype=torch.float32, device=query.device)
    else:
        acc = m = l = out  # unused
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, k_cache, v_cache, block_tables, context_lens, out, acc, m, l,
        scale, partition, num_heads, num_splits, sliding_window,
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        GROUP=group, BLOCK_G=max(16, next_pow2(group)), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, SINGLE=num_splits == 1, PRECISION=precision, num_warps=4, num_stages=2,
    )
    if num_splits > 1:
        _merge_kernel[(num_seqs * num_heads,)](out, acc, m, l, num_splits, HEAD_DIM=head_dim, BLOCK_D=block_d,
                                               BLOCK_S=max(2, next_pow2(num_splits)))
    return out
