"""Writes the new tokens' keys and values into the paged KV cache by slot mapping.

Layout: key/value (num_tokens, num_kv_heads, head_dim), any token/head strides, unit last stride
(they are views of the fused qkv projection); k_cache/v_cache (num_blocks, block_size,
num_kv_heads, head_dim) contiguous, so slot s = block * block_size + offset starts at
s * num_kv_heads * head_dim; slot_mapping (num_tokens,) int64.

Design: one program per token copies its kv_heads x head_dim keys and values (a pure copy: bytes
moved = 2 x read + 2 x write). A negative slot skips the token: the CUDA-graph runner pads a
decode batch to a captured size with slot -1 rows that must not touch the cache.
Reference: engine/kernels/reference.py write_kv_cache.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.triton import next_pow2


@triton.jit
def _write_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
                  k_stride_t, k_stride_h, v_stride_t, v_stride_h,
                  NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + token)
    if slot < 0:
        return
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
    dst = slot * (NUM_KV_HEADS * HEAD_DIM) + offs_h[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(key_ptr + token * k_stride_t + offs_h[:, None] * k_stride_h + offs_d[None, :], mask=mask)
    tl.store(k_cache_ptr + dst, k, mask=mask)
    v = tl.load(value_ptr + token * v_stride_t + offs_h[:, None] * v_stride_h + offs_d[None, :], mask=mask)
    tl.store(v_cache_ptr + dst, v, mask=mask)


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    num_tokens, num_kv_heads, head_dim = key.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    assert key.stride(-1) == 1 and value.stride(-1) == 1 and slot_mapping.dtype == torch.int64
    assert key.dtype == k_cache.dtype and value.dtype == v_cache.dtype
    if num_tokens == 0:
        return
    _write_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_H=next_pow2(num_kv_heads), BLOCK_D=next_pow2(head_dim),
        num_warps=4,
    )
