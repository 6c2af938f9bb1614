"""Rotate-half rotary embedding, applied in place to q and k.

Layout: q (T, num_heads, D), k (T, num_kv_heads, D), any token/head strides with unit last
stride (views of the fused qkv projection); cos/sin either per token, (T, 1, D) or (T, D), or a
position-indexed table (max_positions, D) with `positions` (T,) int64. The table is built by
engine/models/layers.py RotaryEmbedding from rope_inv_freq, which applies llama3 (or linear)
frequency scaling, so the kernel is scaling-agnostic.

Design: one program per token rotates all of its q and k heads: cos/sin are loaded once per token
(half of D suffices: the table is cat(freqs, freqs)) and reused across heads; math in fp32:
    out[:half] = x1 cos - x2 sin,  out[half:] = x2 cos + x1 sin.
Reference: engine/kernels/reference.py rotary (which rounds each product to the dtype; this does
not, so bf16 agrees within one rounding).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.triton import next_pow2


@triton.jit
def _rotate(ptr, token, stride_t, stride_h, c, s, NUM: tl.constexpr, BLOCK_H: tl.constexpr,
            HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = (offs_h[:, None] < NUM) & (offs_d[None, :] < HALF)
    base = ptr + token * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(base, (x1 * c[None, :] - x2 * s[None, :]).to(ptr.dtype.element_ty), mask=mask)
    tl.store(base + HALF, (x2 * c[None, :] + x1 * s[None, :]).to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, pos_ptr, q_stride_t, q_stride_h, k_stride_t, k_stride_h,
                   cs_stride, NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, BLOCK_HQ: tl.constexpr,
                   BLOCK_HK: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, HAS_POS: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    if HAS_POS:
        row = tl.load(pos_ptr + token)
    else:
        row = token
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    c = tl.load(cos_ptr + row * cs_stride + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + row * cs_stride + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    _rotate(q_ptr, token, q_stride_t, q_stride_h, c, s, NUM_HEADS, BLOCK_HQ, HALF, BLOCK_HALF)
    _rotate(k_ptr, token, k_stride_t, k_stride_h, c, s, NUM_KV_HEADS, BLOCK_HK, HALF, BLOCK_HALF)


def rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q and k in place; returns them. cos/sin: per token, or a table indexed by positions."""
    num_tokens, num_heads, head_dim = q.shape
    cos2, sin2 = cos.reshape(cos.shape[0], -1), sin.reshape(sin.shape[0], -1)
    assert cos2.shape[1] == head_dim and cos2.stride() == sin2.stride() and cos2.stride(1) == 1
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and head_dim % 2 == 0
    if num_tokens == 0:
        return q, k
    half = head_dim // 2
    _rotary_kernel[(num_tokens,)](
        q, k, cos2, sin2, positions if positions is not None else cos2, q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), cos2.stride(0),
        NUM_HEADS=num_heads, NUM_KV_HEADS=k.shape[1], BLOCK_HQ=next_pow2(num_heads), BLOCK_HK=next_pow2(k.shape[1]),
        HALF=half, BLOCK_HALF=next_pow2(half), HAS_POS=positions is not None, num_warps=4,
    )
    return q, k
