"""Random paged-attention batches for the GPU kernels' tests and benchmarks (Triton and CUDA).

The cache is NaN-poisoned everywhere no sequence wrote, and block-table entries past a sequence's
blocks point at a poisoned block, so a kernel reading beyond what a sequence may see, or leaving
an output element unwritten (outputs are poisoned by the callers), produces NaN. With a sliding
window, poison_before_windows also poisons the keys before every sequence's first window, which a
kernel must skip rather than read and mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.kernels import reference

# Per-dtype tolerances (atol = rtol) of a kernel against the float64 dense attention.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


@dataclass(slots=True)
class PagedBatch:
    query: torch.Tensor  # (num_tokens, num_heads, head_dim), a strided view like the model's
    k_cache: torch.Tensor  # (num_blocks, block_size, num_kv_heads, head_dim)
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # (num_seqs, max_blocks) int32
    context_lens: torch.Tensor  # (num_seqs,) int32
    query_start_loc: torch.Tensor  # (num_seqs + 1,) int32
    scale: float
    max_query_len: int
    max_context_len: int
    dense_k: list[torch.Tensor]
    dense_v: list[torch.Tensor]


def make_paged_batch(seqs: list[tuple[int, int]], num_heads: int, num_kv_heads: int, head_dim: int,
                     block_size: int, dtype: torch.dtype, device: str | torch.device = "cpu",
                     seed: int = 0, spare_blocks: int = 3) -> PagedBatch:
    """seqs: (query tokens, context length including them) per sequence; blocks shuffled."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-ctx // block_size) for _, ctx in seqs]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    unused = ids.pop()
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), math.nan, dtype=dtype)
    v_cache = torch.full_like(k_cache, math.nan)
    block_tables = torch.full((len(seqs), max(blocks_per_seq) + 1), unused, dtype=torch.int32)
    dense_k, dense_v = [], []
    for s, ((_, ctx), n_blocks) in enumerate(zip(seqs, blocks_per_seq)):
        block_tables[s, :n_blocks] = torch.tensor([ids.pop() for _ in range(n_blocks)], dtype=torch.int32)
        key = torch.randn(ctx, num_kv_heads, head_dim, generator=gen).to(dtype)
        value = torch.randn(ctx, num_kv_heads, head_dim, generator=gen).to(dtype)
        positions = torch.arange(ctx)
        slots = block_tables[s, positions // block_size].long() * block_size + positions % block_size
        reference.write_kv_cache(key, value, k_cache, v_cache, slots)
        dense_k.append(key)
        dense_v.append(value)
    q_lens = [q for q, _ in seqs]
    fused = torch.randn(sum(q_lens), num_heads + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
    dev = torch.device(device)
    fused = fused.to(dev)
    return PagedBatch(
        query=fused[:, :num_heads], k_cache=k_cache.to(dev), v_cache=v_cache.to(dev),
        block_tables=block_tables.to(dev),
        context_lens=torch.tensor([c for _, c in seqs], dtype=torch.int32, device=dev),
        query_start_loc=torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev),
        scale=1.0 / math.sqrt(head_dim), max_query_len=max(q_lens), max_context_len=max(c for _, c in seqs),
        dense_k=[k.to(dev) for k in dense_k], dense_v=[v.to(dev) for v in dense_v],
    )


def poison_before_windows(k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                          context_lens: torch.Tensor, query_start_loc: torch.Tensor, sliding_window: int) -> None:
    """NaN-poisons, in place, each sequence's cached keys and values before its first query row's
    window (positions < context_len - q_len - sliding_window + 1): no row may see them."""
    block_size = k_cache.shape[1]
    q_lens = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
    for s, (q_len, ctx) in enumerate(zip(q_lens, context_lens.tolist())):
        hidden = torch.arange(max(0, ctx - q_len - sliding_window + 1), device=k_cache.device)
        blocks = block_tables[s, hidden // block_size].long()
        k_cache[blocks, hidden % block_size] = math.nan
        v_cache[blocks, hidden % block_size] = math.nan


def dense_attention(batch: PagedBatch, sliding_window: int = 0) -> torch.Tensor:
    """Explicit causal softmax attention in float64, one sequence at a time, no paging; with
    sliding_window W > 0 the row at position p sees only keys j with p - j < W."""
    outs = []
    starts = batch.query_start_loc.tolist()
    for s, (k, v) in enumerate(zip(batch.dense_k, batch.dense_v)):
        q = batch.query[starts[s]:starts[s + 1]].double()
        group = q.shape[1] // k.shape[1]
        k = k.double().repeat_interleave(group, dim=1)
        v = v.double().repeat_interleave(group, dim=1)
        ctx, q_len = k.shape[0], q.shape[0]
        scores = torch.einsum("qhd,khd->hqk", q, k) * batch.scale
        keys = torch.arange(ctx, device=q.device)
        allowed = keys[None, :] <= keys[ctx - q_len:, None]
        if sliding_window > 0:
            allowed &= keys[ctx - q_len:, None] - keys[None, :] < sliding_window
        outs.append(torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, -math.inf).softmax(-1), v))
    return torch.cat(outs)


def assert_attention_close(actual: torch.Tensor, batch: PagedBatch, sliding_window: int = 0) -> None:
    assert not actual.isnan().any(), "read unwritten (NaN-poisoned) cache or left output unwritten"
    tol = TOLERANCE[actual.dtype]
    torch.testing.assert_close(actual.double(), dense_attention(batch, sliding_window), atol=tol, rtol=tol)
