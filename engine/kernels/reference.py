"""Pure-torch reference implementations of the kernels (attention, norm, rotary).

They define the semantics that every backend must match (the tests compare
against them) and serve as the fallback backend wherever no faster kernel
exists. Written for clarity: one sequence at a time, device-agnostic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Stores token t's key and value at cache slot slot_mapping[t] (see ops.write_kv_cache)."""
    block_size = k_cache.shape[1]
    slots = slot_mapping.long()
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = key
    v_cache[blocks, offsets] = value


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, context_len: int) -> torch.Tensor:
    """The first context_len positions of one sequence, (context_len, num_kv_heads, head_dim)."""
    block_size = cache.shape[1]
    num_blocks = -(-context_len // block_size)
    blocks = block_table[:num_blocks].long()
    return cache[blocks].flatten(0, 1)[:context_len]


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    max_query_len: int,
    max_context_len: int,
    sliding_window: int = 0,
) -> torch.Tensor:
    """Causal attention of a mixed batch over the paged cache (see ops.paged_attention).

    sliding_window W > 0: the query at position p sees only keys p - W + 1 .. p; 0: all up to p.
    max_query_len and max_context_len are not needed here: the lengths are read
    per sequence.
    """
    del max_query_len, max_context_len
    num_heads = query.shape[1]
    group = num_heads // k_cache.shape[2]
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    starts = query_start_loc.tolist()
    for seq, context_len in enumerate(context_lens.tolist()):
        start, end = starts[seq], starts[seq + 1]
        q_len = end - start
        if q_len == 0:
            continue
        k = gather_kv(k_cache, block_tables[seq], context_len).repeat_interleave(group, dim=1)
        v = gather_kv(v_cache, block_tables[seq], context_len).repeat_interleave(group, dim=1)
        # Query row j sits at position context_len - q_len + j and sees keys 0..that (the last W).
        positions = torch.arange(context_len - q_len, context_len, device=query.device)[:, None]
        keys = torch.arange(context_len, device=query.device)[None, :]
        visible = keys <= positions  # (q_len, context_len)
        if sliding_window > 0:
            visible &= keys > positions - sliding_window
        attended = F.scaled_dot_product_attention(
            query[start:end].transpose(0, 1),  # (heads, q_len, head_dim)
            k.transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=visible,
            scale=scale,
        )
        out[start:end] = attended.transpose(0, 1)
    return out


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Adds residual to x first when given; returns (normed, new residual). Computed in fp32 as
    Hugging Face's LlamaRMSNorm does, so float32 runs match it bit for bit."""
    if residual is not None:
        x = x + residual
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype), x


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary embedding, q: (T, heads, D), k: (T, kv_heads, D), cos/sin: (T, 1, D)."""
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
