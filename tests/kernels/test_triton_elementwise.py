"""Triton KV-cache write, fused add + RMSNorm, rotary and SiLU-and-mul against their torch references.

Interpreted on CPU (TRITON_INTERPRET=1, float32, tiny shapes); compiled on CUDA with odd shapes in
every dtype. Outputs are NaN-poisoned where the kernel allocates them itself only through
torch.empty, so the cache test poisons the cache to catch writes to the wrong slots.
"""
from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
pytest.importorskip("triton")

from engine.kernels import reference  # noqa: E402
from engine.kernels.triton.activation import silu_and_mul, silu_and_mul_reference  # noqa: E402
from engine.kernels.triton.cache_write import write_kv_cache  # noqa: E402
from engine.kernels.triton.norm import add_rms_norm  # noqa: E402
from engine.kernels.triton.rotary import rotary_  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if CUDA else [torch.float32]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 3, 24, 4), (5, 1, 16, 16)] + ([(301, 8, 128, 16)] if CUDA else []),
                         ids=lambda s: "t{}-kv{}-d{}-b{}".format(*s))
def test_write_kv_cache_matches_reference(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    tokens, kv_heads, head_dim, block_size = shape
    num_blocks = tokens // block_size + 4
    fused = _randn(tokens, 3 * kv_heads, head_dim, dtype=dtype, seed=1)  # key/value: strided views
    key, value = fused[:, :kv_heads], fused[:, 2 * kv_heads:]
    slots = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(2))[:tokens]
    slots[1] = -1  # a CUDA-graph padding row: must not be written
    slots = slots.to(DEVICE)
    k_cache = torch.full((num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    write_kv_cache(key, value, k_cache, v_cache, slots)
    k_ref, v_ref = k_cache.clone().fill_(float("nan")), v_cache.clone().fill_(float("nan"))
    keep = slots >= 0
    reference.write_kv_cache(key[keep], value[keep], k_ref, v_ref, slots[keep])
    torch.testing.assert_close(k_cache, k_ref, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(v_cache, v_ref, equal_nan=True, atol=0, rtol=0)
    assert k_cache.isnan().sum() == k_cache.numel() - (tokens - 1) * kv_heads * head_dim


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,hidden", [(3, 48), (5, 100)] + ([(77, 4096), (1, 5000)] if CUDA else []))
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "no-residual"])
def test_add_rms_norm_matches_reference(rows: int, hidden: int, dtype: torch.dtype, with_residual: bool) -> None:
    x = _randn(rows, hidden, dtype=dtype, seed=3)
    residual = _randn(rows, hidden, dtype=dtype, seed=4) if with_residual else None
    weight = _randn(hidden, dtype=dtype, seed=5)
    out, new_residual = add_rms_norm(x, residual, weight, 1e-5)
    ref_out, ref_residual = reference.add_rms_norm(x, residual, weight, 1e-5)
    torch.testing.assert_close(new_residual, ref_residual, atol=0, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,heads,kv_heads,head_dim", [(5, 4, 2, 16), (3, 3, 1, 24)]
                         + ([(257, 32, 8, 128), (9, 14, 2, 64)] if CUDA else []))
@pytest.mark.parametrize("table", [False, True], ids=["per-token", "position-table"])
def test_rotary_matches_reference(tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                                  table: bool) -> None:
    # cos/sin from a llama3-scaled frequency table, as engine/models/layers.py builds it.
    from engine.config import ModelConfig
    from engine.models.layers import rope_inv_freq

    config = ModelConfig("llama", 10, 8, 8, 1, heads, kv_heads, head_dim, 1e-5, 500000.0, 8192, False,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    freqs = torch.outer(torch.arange(300, dtype=torch.float32), rope_inv_freq(config))
    emb = torch.cat((freqs, freqs), -1).to(DEVICE)
    positions = torch.randint(0, 300, (tokens,), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    cos, sin = emb.cos()[positions].unsqueeze(1).to(dtype), emb.sin()[positions].unsqueeze(1).to(dtype)
    qkv = _randn(tokens, heads + 2 * kv_heads, head_dim, dtype=dtype, seed=7)
    q, k = qkv[:, :heads], qkv[:, heads:heads + kv_heads]
    q_ref, k_ref = reference.rotary(q.clone(), k.clone(), cos, sin)
    v_before = qkv[:, heads + kv_heads:].clone()
    if table:
        rotary_(q, k, emb.cos().to(dtype), emb.sin().to(dtype), positions)
    else:
        rotary_(q, k, cos, sin)
    torch.testing.assert_close(q, q_ref, atol=TOL[dtype] * 2, rtol=TOL[dtype])
    torch.testing.assert_close(k, k_ref, atol=TOL[dtype] * 2, rtol=TOL[dtype])
    assert torch.equal(qkv[:, heads + kv_heads:], v_before)  # in place, and only q and k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,inter", [(3, 40), (1, 7)] + ([(129, 14336), (5, 1000)] if CUDA else []))
def test_silu_and_mul_matches_reference(tokens: int, inter: int, dtype: torch.dtype) -> None:
    x = _randn(tokens, 2 * inter, dtype=dtype, seed=8)
    out = silu_and_mul(x, block=16 if not CUDA else 1024)
    torch.testing.assert_close(out, silu_and_mul_reference(x), atol=TOL[dtype], rtol=TOL[dtype])
