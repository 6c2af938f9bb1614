"""Prefill/extend attention over the paged cache: any mix of prefill chunks and decodes.

Layout: query (num_tokens, num_heads, head_dim), the query tokens of all sequences concatenated
(unit last stride); query_start_loc (num_seqs + 1,) int32; context_lens (num_seqs,) int32 tokens
in the cache after this step, query tokens included (already written); k_cache/v_cache
(num_blocks, block_size, num_kv_heads, head_dim) contiguous; block_tables (num_seqs, max_blocks)
int32. Query row j of a sequence with q_len rows sits at position context_len - q_len + j (chunked
prefill and prefix-cache hits put earlier tokens in the cache) and sees keys 0..that position, or
with a sliding window W > 0 only the last W of them, p - W + 1 .. p.

Design: FlashAttention-2 over pages. One program per (BLOCK_M query rows, sequence, head); it
walks the keys in BLOCK_N tiles, gathering each key's page through the block table, up to the
last position its rows can see (the causal bound), with fp32 online softmax and tensor-core dots.
Programs whose rows start past their sequence's q_len exit at once, so the grid is sized from the
host-side max_query_len. GQA: head h reads kv head h // (num_heads // num_kv_heads); the group's
heads re-read the same K/V tiles, mostly from L2. A sliding window starts the walk at the first key
of its first row's window (no key before it is read) and masks each row to its own window; a row
may then see no key of a tile, which the online softmax must survive (m stays -inf).
Reference: engine/kernels/reference.py paged_attention.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.triton import next_pow2


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, starts_ptr, out_ptr, scale, num_heads, window,
    q_stride_t, q_stride_h, c_stride_b, c_stride_s, c_stride_h, table_stride,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    m0 = tl.program_id(0) * BLOCK_M
    seq = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(starts_ptr + seq)
    q_len = tl.load(starts_ptr + seq + 1) - q_start
    if m0 >= q_len:
        return
    ctx = tl.load(lens_ptr + seq)
    kv_head = head // GROUP
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < HEAD_DIM
    pos = ctx - q_len + offs_m  # (BLOCK_M,) absolute positions; padded rows' outputs are never stored
    first = tl.where(window > 0, tl.maximum(pos - window + 1, 0), 0)  # (BLOCK_M,) each row's first key
    tokens = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + tokens[:, None] * q_stride_t + head * q_stride_h + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = tl.minimum(ctx, ctx - q_len + m0 + BLOCK_M)  # one past the last position these rows see
    lo = tl.where(window > 0, tl.maximum(ctx - q_len + m0 - window + 1, 0), 0)  # row m0's first key
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        page = tl.load(tables_ptr + seq.to(tl.int64) * table_stride + offs_n // BLOCK_SIZE, mask=n_mask, other=0)
        row = page.to(tl.int64) * c_stride_b + (offs_n % BLOCK_SIZE) * c_stride_s + kv_head * c_stride_h
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        visible = n_mask[None, :] & (offs_n[None, :] <= pos[:, None]) & (offs_n[None, :] >= first[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # -inf while a row has seen no key yet (a window starting past this tile): exp(-inf - 0) = 0.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_ref)
        p = tl.exp(s - m_ref[:, None])
        v = tl.load(v_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l = 0 only on padded rows past every window
    tl.store(out_ptr + (tokens[:, None] * num_heads + head) * HEAD_DIM + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def prefill_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      context_lens: torch.Tensor, query_start_loc: torch.Tensor, scale: float, max_query_len: int,
                      out: torch.Tensor | None = None, block_m: int | None = None,
                      block_n: int | None = None, num_warps: int = 4, num_stages: int = 2,
                      sliding_window: int = 0) -> torch.Tensor:
    """Causal attention of a mixed batch over the paged cache, local when sliding_window > 0 (see the
    module comment)."""
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and query.stride(-1) == 1
    assert block_tables.dtype == torch.int32 and context_lens.dtype == torch.int32
    assert query_start_loc.dtype == torch.int32
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    assert out.is_contiguous() and out.shape == query.shape
    num_seqs = context_lens.shape[0]
    # fp32 tiles take twice the shared memory: halve them so head_dim 256 still fits.
    tile = 64 if query.element_size() <= 2 or head_dim <= 64 else 32
    block_m, block_n = block_m or tile, block_n or tile
    grid = (triton.cdiv(max(1, max_query_len), block_m), num_seqs, num_heads)
    _prefill_kernel[grid](
        query, k_cache, v_cache, block_tables, context_lens, query_start_loc, out, scale, num_heads, sliding_window,
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=block_n,
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32", num_warps=num_warps, num_stages=num_stages,
    )
    return out
