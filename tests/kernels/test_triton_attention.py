"""Triton paged attention (decode split-K and prefill/extend) against dense float64 attention.

On a machine without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, tiny
shapes, float32 only: the interpreter mis-handles bf16 arithmetic); with CUDA they run compiled,
on random odd shapes, in every dtype, with NaN-poisoned outputs. Sliding-window cases also poison
the keys before each window, which the kernels must skip.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
pytest.importorskip("triton")

from engine.kernels.triton.attention_decode import decode_attention, plan_splits  # noqa: E402
from engine.kernels.triton.attention_prefill import prefill_attention  # noqa: E402
from engine.kernels.triton.testing import (  # noqa: E402
    PagedBatch, assert_attention_close, make_paged_batch, poison_before_windows,
)

DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if CUDA else [torch.float32]
# (num_heads, num_kv_heads, head_dim, block_size): GQA 1, 3 and 4; a head dim no power of two.
SHAPES = [(4, 1, 32, 16), (6, 2, 24, 16), (2, 2, 16, 8)]
if CUDA:  # the Llama-3.1-8B shape, a head dim no power of two, a GQA group of 7, larger pages
    SHAPES = [(32, 8, 128, 16), (12, 3, 80, 16), (14, 2, 64, 32)]
# Sliding windows against the contexts below: 1, shorter than most, one page, the longest CPU
# context (45), longer than any; on a GPU Gemma 3's 512 and 1024. Decode batches also hold contexts
# of exactly W and W + 1.
WINDOWS = [1, 5, 16, 45, 100] if not CUDA else [1, 512, 1024, 10_000]


def _poisoned(like: torch.Tensor) -> torch.Tensor:
    return torch.full(like.shape, float("nan"), dtype=like.dtype, device=like.device)


def _decode_seqs(rng: random.Random, n: int, max_ctx: int) -> list[tuple[int, int]]:
    return [(1, rng.randint(1, max_ctx)) for _ in range(n)] + [(1, 1), (1, max_ctx)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
@pytest.mark.parametrize("num_splits", [1, 3, None], ids=["one-split", "three-splits", "planned"])
def test_decode_matches_dense(shape: tuple[int, int, int, int], dtype: torch.dtype, num_splits: int | None) -> None:
    heads, kv_heads, head_dim, block_size = shape
    rng = random.Random(hash((shape, num_splits)) & 0xFFFF)
    seqs = _decode_seqs(rng, 3 if not CUDA else 29, 45 if not CUDA else 3001)
    batch = make_paged_batch(seqs, heads, kv_heads, head_dim, block_size, dtype, DEVICE, seed=rng.randint(0, 99))
    out = _poisoned(batch.query)
    decode_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens,
                     batch.scale, batch.max_context_len, out=out, block_n=16 if not CUDA else 64,
                     num_splits=num_splits)
    assert_attention_close(out, batch)


def _hide_before_windows(batch: PagedBatch, window: int) -> None:
    poison_before_windows(batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens,
                          batch.query_start_loc, window)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
@pytest.mark.parametrize("num_splits", [1, 3, None], ids=["one-split", "three-splits", "planned"])
@pytest.mark.parametrize("window", WINDOWS)
def test_decode_sliding_window_matches_dense(shape: tuple[int, int, int, int], dtype: torch.dtype,
                                             num_splits: int | None, window: int) -> None:
    """Keys before each window are NaN: the splits must cover the window only, from its first key."""
    heads, kv_heads, head_dim, block_size = shape
    rng = random.Random(hash((shape, num_splits, window)) & 0xFFFF)
    seqs = _decode_seqs(rng, 3 if not CUDA else 29, 45 if not CUDA else 3001) + [(1, window), (1, window + 1)]
    batch = make_paged_batch(seqs, heads, kv_heads, head_dim, block_size, dtype, DEVICE, seed=rng.randint(0, 99))
    _hide_before_windows(batch, window)
    out = _poisoned(batch.query)
    decode_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens,
                     batch.scale, batch.max_context_len, out=out, block_n=16 if not CUDA else 64,
                     num_splits=num_splits, sliding_window=window)
    assert_attention_close(out, batch, window)


def test_decode_grid_bound_above_contexts_is_harmless() -> None:
    """A captured CUDA graph sizes the grid from max_model_len: splits past every context are empty."""
    batch = make_paged_batch([(1, 5), (1, 20)], 4, 2, 16, 8, torch.float32, DEVICE)
    out = _poisoned(batch.query)
    decode_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens,
                     batch.scale, 200, out=out, block_n=16, num_splits=5)
    assert_attention_close(out, batch)


def test_plan_splits_covers_the_context() -> None:
    for seqs, kv, ctx in [(1, 8, 4096), (64, 8, 4096), (1, 1, 1), (3, 2, 100_000), (256, 8, 1024)]:
        splits, partition = plan_splits(seqs, kv, ctx, 64)
        assert partition % 64 == 0 and splits * partition >= ctx > (splits - 1) * partition
        assert 1 <= splits <= 64
    assert plan_splits(1, 8, 4096, 64)[0] > 1  # batch 1 is split to fill the GPU
    assert plan_splits(256, 8, 1024, 64)[0] == 1  # a large batch already fills it


def test_plan_splits_covers_only_the_window() -> None:
    for seqs, kv, ctx, window in [(1, 8, 100_000, 512), (1, 8, 4096, 1024), (4, 2, 300, 1), (1, 1, 50, 4096)]:
        splits, partition = plan_splits(seqs, kv, ctx, 64, sliding_window=window)
        keys = min(ctx, window)
        assert partition % 64 == 0 and splits * partition >= keys > (splits - 1) * partition
    assert plan_splits(1, 8, 100_000, 64, sliding_window=512) == plan_splits(1, 8, 512, 64)
    assert plan_splits(1, 8, 50, 64, sliding_window=4096) == plan_splits(1, 8, 50, 64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
def test_prefill_extend_matches_dense(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    heads, kv_heads, head_dim, block_size = shape
    if CUDA:  # fresh prefills, chunks over cached prefixes (prefix hits), decodes, odd lengths
        rng = random.Random(7)
        seqs = [(q, q + rng.randint(0, 300)) for q in (1, 1, 17, 131, 64, 1, 255, 3)]
        block = 64
    else:
        seqs = [(1, 9), (5, 5), (7, 19), (12, 12)]
        block = 16
    batch = make_paged_batch(seqs, heads, kv_heads, head_dim, block_size, dtype, DEVICE)
    out = _poisoned(batch.query)
    prefill_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens,
                      batch.query_start_loc, batch.scale, batch.max_query_len, out=out, block_m=block, block_n=block)
    assert_attention_close(out, batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("tall", [False, True], ids=["square-tiles", "tall-tiles"])
def test_prefill_extend_sliding_window_matches_dense(shape: tuple[int, int, int, int], dtype: torch.dtype,
                                                     window: int, tall: bool) -> None:
    """Fresh prefills, chunks over cached prefixes and decodes, keys before each window NaN. Tall
    tiles (BLOCK_M = 2 BLOCK_N) leave late rows of a small window no key in the first key tile."""
    heads, kv_heads, head_dim, block_size = shape
    if CUDA:
        rng = random.Random(window)
        seqs = [(q, q + rng.randint(0, 1300)) for q in (1, 1, 17, 131, 64, 1, 255, 3)] + [(200, 1100)]
        block = 32 if tall else 64
    else:
        seqs = [(1, 9), (5, 5), (7, 19), (12, 12), (20, 45), (1, 45)]
        block = 16
    batch = make_paged_batch(seqs, heads, kv_heads, head_dim, block_size, dtype, DEVICE)
    _hide_before_windows(batch, window)
    out = _poisoned(batch.query)
    prefill_attention(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens,
                      batch.query_start_loc, batch.scale, batch.max_query_len, out=out,
                      block_m=2 * block if tall else block, block_n=block, sliding_window=window)
    assert_attention_close(out, batch, window)
