"""Paged attention in batched torch ops, for devices without a dedicated kernel yet (CUDA until
the Triton/CUDA kernels land).

Unlike the reference, it never reads lengths on the host (no device sync) and launches a fixed
number of ops per call, whatever the batch: the K/V of every sequence are gathered through its
block table into a padded (num_seqs, max_context_len) layout, queries are scattered into
(num_seqs, max_query_len), and one masked scaled_dot_product_attention covers the batch.
Memory: O(num_seqs * max_context_len * num_kv_heads * head_dim) for the gathered K/V.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """Same contract as ops.paged_attention (sliding_window masks; the gather still spans the context)."""
    num_tokens, num_heads, head_dim = query.shape
    num_seqs = context_lens.shape[0]
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    device = query.device
    blocks_needed = -(-max_context_len // block_size)
    # Entries past a sequence's blocks are arbitrary: clamp to a valid id, the mask hides them.
    tables = block_tables[:, :blocks_needed].long().clamp(0, num_blocks - 1)
    keys = torch.arange(max_context_len, device=device)
    lens = context_lens.long()
    valid = (keys[None, :] < lens[:, None])[:, :, None, None]  # (S, Lk, 1, 1)
    # Stale or unwritten slots may hold anything (NaN included): zero them so 0-weight stays 0.
    k = k_cache[tables].flatten(1, 2)[:, :max_context_len].masked_fill(~valid, 0)  # (S, Lk, kv_heads, D)
    v = v_cache[tables].flatten(1, 2)[:, :max_context_len].masked_fill(~valid, 0)

    starts = query_start_loc.long()
    q_lens = starts[1:] - starts[:-1]
    token = torch.arange(num_tokens, device=device)
    seq_of_token = torch.searchsorted(starts[1:], token, right=True)
    row_of_token = token - starts[seq_of_token]
    padded_q = query.new_zeros(num_seqs, max_query_len, num_heads, head_dim)
    padded_q[seq_of_token, row_of_token] = query

    # Query row j of sequence s sits at position len_s - q_len_s + j and sees keys 0..that (the last W).
    positions = (lens - q_lens)[:, None] + torch.arange(max_query_len, device=device)[None, :]  # (S, Lq)
    visible = keys[None, None, :] <= positions[:, :, None]  # (S, Lq, Lk)
    if sliding_window > 0:  # padding rows may see no key at all: their NaN rows are never gathered
        visible &= keys[None, None, :] > positions[:, :, None] - sliding_window
    out = F.scaled_dot_product_attention(
        padded_q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=visible[:, None], scale=scale, enable_gqa=num_heads != num_kv_heads,
    )  # (S, heads, Lq, D)
    return out.transpose(1, 2)[seq_of_token, row_of_token]
