"""CUDA C++ kernels (engine._C_cuda) against the same references as the Triton ones: decode
attention against dense float64 attention, the KV-cache write against reference.write_kv_cache.
Random odd shapes, every dtype, NaN-poisoned outputs and caches; sliding windows with the keys
before each window poisoned too. Needs a GPU and a CUDA build (all but the host-side split
planning); bench/gpu_check.sh sets LLMAAS_REQUIRE_CUDA_KERNELS=1 so a missing build fails instead
of skipping.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

from engine.kernels import cuda_kernels, reference
from engine.kernels.triton.testing import assert_attention_close, make_paged_batch, poison_before_windows

if os.environ.get("LLMAAS_REQUIRE_CUDA_KERNELS") == "1":
    assert torch.cuda.is_available() and cuda_kernels.available(), "CUDA kernels required but not built/usable"
needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_kernels.available()),
                               reason="needs a GPU and engine._C_cuda (LLMAAS_BUILD_CUDA=1)")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (num_heads, num_kv_heads, head_dim, block_size): GQA 1, 4, 7 (a group no divisor of 8 fits) and 16.
SHAPES = [(32, 8, 128, 16), (9, 9, 64, 16), (14, 2, 64, 32), (16, 1, 256, 16), (12, 3, 128, 5)]
# Sliding windows against contexts of 1..2500 and 4099: 1, Gemma 3's 512 and 1024, longer than any
# context (each batch also holds contexts of exactly W and W + 1).
WINDOWS = [1, 512, 1024, 10_000]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
@pytest.mark.parametrize("num_splits", [1, 4, None], ids=["one-split", "four-splits", "planned"])
def test_decode_matches_dense(shape: tuple[int, int, int, int], dtype: torch.dtype, num_splits: int | None) -> None:
    heads, kv_heads, head_dim, block_size = shape
    rng = random.Random(11)
    seqs = [(1, rng.randint(1, 2500)) for _ in range(37)] + [(1, 1), (1, 4099)]
    batch = make_paged_batch(seqs, heads, kv_heads, head_dim, block_size, dtype, "cuda", seed=3)
    out = torch.full(batch.query.shape, float("nan"), dtype=dtype, device="cuda")
    cuda_kernels.decode_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables,
                                  batch.context_lens, batch.scale, batch.max_context_len, out=out,
                                  num_splits=num_splits)
    assert_attention_close(out, batch)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
@pytest.mark.parametrize("num_splits", [1, 4, None], ids=["one-split", "four-splits", "planned"])
@pytest.mark.parametrize("window", WINDOWS)
def test_decode_sliding_window_matches_dense(shape: tuple[int, int, int, int], dtype: torch.dtype,
                                             num_splits: int | None, window: int) -> None:
    """Keys before each sequence's window are NaN: the splits must tile the window only."""
    heads, kv_heads, head_dim, block_size = shape
    rng = random.Random(window)
    seqs = [(1, rng.randint(1, 2500)) for _ in range(13)] + [(1, 1), (1, 4099), (1, window), (1, window + 1)]
    batch = make_paged_batch(seqs, heads, kv_heads, head_dim, block_size, dtype, "cuda", seed=5)
    poison_before_windows(batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens,
                          batch.query_start_loc, window)
    out = torch.full(batch.query.shape, float("nan"), dtype=dtype, device="cuda")
    cuda_kernels.decode_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables,
                                  batch.context_lens, batch.scale, batch.max_context_len, out=out,
                                  num_splits=num_splits, sliding_window=window)
    assert_attention_close(out, batch, window)


def test_plan_splits_covers_only_the_window() -> None:
    """Host-side planning, no GPU needed: a window's keys, not the context, set the splits."""
    for seqs, kv, ctx, window in [(1, 8, 100_000, 512), (1, 8, 4096, 1024), (4, 2, 300, 1), (1, 1, 50, 4096)]:
        splits, partition = cuda_kernels.plan_splits(seqs, kv, ctx, sliding_window=window)
        keys = min(ctx, window)
        assert splits * partition >= keys > (splits - 1) * partition
    assert cuda_kernels.plan_splits(1, 8, 100_000, sliding_window=1024) == cuda_kernels.plan_splits(1, 8, 1024)
    assert cuda_kernels.plan_splits(1, 8, 50, sliding_window=4096) == cuda_kernels.plan_splits(1, 8, 50)
    assert cuda_kernels.plan_splits(1, 8, 100_000)[0] > cuda_kernels.plan_splits(1, 8, 100_000, sliding_window=512)[0]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,kv_heads,head_dim", [(301, 8, 128), (7, 3, 72), (33, 1, 64)])
def test_write_kv_cache_matches_reference(tokens: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    block_size, num_blocks = 16, tokens // 16 + 5
    fused = torch.randn(tokens, 3 * kv_heads, head_dim, device="cuda").to(dtype)
    key, value = fused[:, :kv_heads], fused[:, 2 * kv_heads:]
    slots = torch.randperm(num_blocks * block_size, device="cuda")[:tokens]
    slots[tokens // 2] = -1  # graph padding: skipped
    k_cache = torch.full((num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype, device="cuda")
    v_cache = k_cache.clone()
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    cuda_kernels.write_kv_cache(key, value, k_cache, v_cache, slots)
    keep = slots >= 0
    reference.write_kv_cache(key[keep], value[keep], k_ref, v_ref, slots[keep])
    torch.testing.assert_close(k_cache, k_ref, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(v_cache, v_ref, equal_nan=True, atol=0, rtol=0)


@needs_gpu
def test_decode_rejects_unsupported_head_dim() -> None:
    batch = make_paged_batch([(1, 5)], 4, 2, 80, 16, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match="head_dim"):
        cuda_kernels.decode_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables,
                                      batch.context_lens, batch.scale, batch.max_context_len)
