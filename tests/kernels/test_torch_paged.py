"""The batched torch paged attention (the GPU fallback) against the per-sequence reference."""
from __future__ import annotations

import pytest
import torch

from engine.kernels import reference, torch_paged


def random_case(gen: torch.Generator, num_heads: int, num_kv_heads: int, block_size: int,
                lengths: list[tuple[int, int]], dtype: torch.dtype) -> tuple:
    head_dim = 32
    blocks_per_seq = [-(-ctx // block_size) for _, ctx in lengths]
    num_blocks = sum(blocks_per_seq) + 3
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((len(lengths), max(blocks_per_seq) + 2), 2**31 - 1, dtype=torch.int32)
    for s, ((_, ctx), nb) in enumerate(zip(lengths, blocks_per_seq)):
        table = [ids.pop() for _ in range(nb)]
        tables[s, :nb] = torch.tensor(table, dtype=torch.int32)
        for p in range(ctx):
            k_cache[table[p // block_size], p % block_size] = torch.randn(num_kv_heads, head_dim, generator=gen).to(dtype)
            v_cache[table[p // block_size], p % block_size] = torch.randn(num_kv_heads, head_dim, generator=gen).to(dtype)
    q_lens = [q for q, _ in lengths]
    query = torch.randn(sum(q_lens), num_heads, head_dim, generator=gen).to(dtype)
    starts = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    lens = torch.tensor([ctx for _, ctx in lengths], dtype=torch.int32)
    return query, k_cache, v_cache, tables, lens, starts, head_dim ** -0.5, max(q_lens), max(lens.tolist())


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (9, 3), (8, 2)])
@pytest.mark.parametrize("block_size", [16, 5])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_matches_reference_on_mixed_batches(num_heads: int, num_kv_heads: int, block_size: int,
                                            dtype: torch.dtype, tol: float) -> None:
    gen = torch.Generator().manual_seed(num_heads * 100 + block_size)
    lengths = [(1, 1), (1, 37), (23, 23), (7, 50), (1, 16), (30, 61)]  # (query rows, context length)
    case = random_case(gen, num_heads, num_kv_heads, block_size, lengths, dtype)
    want = reference.paged_attention(*case)
    got = torch_paged.paged_attention(*case)
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (9, 3)])
@pytest.mark.parametrize("block_size", [16, 5])
@pytest.mark.parametrize("window", [1, 7, 16, 23, 61, 1000])  # 16: one block and a context; 61: the longest
def test_sliding_window_matches_reference(num_heads: int, num_kv_heads: int, block_size: int, window: int) -> None:
    gen = torch.Generator().manual_seed(window * 100 + block_size)
    lengths = [(1, 1), (1, 37), (23, 23), (7, 50), (1, 16), (30, 61)]  # (query rows, context length)
    case = random_case(gen, num_heads, num_kv_heads, block_size, lengths, torch.float32)
    want = reference.paged_attention(*case, sliding_window=window)
    got = torch_paged.paged_attention(*case, sliding_window=window)
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
