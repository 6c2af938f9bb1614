"""write_kv_cache: every backend stores exactly the given slots and nothing else."""
from __future__ import annotations

import math

import pytest
import torch

from engine.kernels import ops

BACKENDS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif(not ops.cpp_available(), reason="engine._C not built")),
]
needs_cpp = pytest.mark.skipif(not ops.cpp_available(), reason="engine._C not built")


def fused_kv(num_tokens: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value as the model hands them over: non-contiguous slices of one projection."""
    qkv = torch.randn(num_tokens, 2 + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
    return qkv[:, 2:2 + num_kv_heads], qkv[:, 2 + num_kv_heads:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size", [(1, 64, 16), (3, 64, 16), (2, 128, 5), (3, 72, 7)])
@pytest.mark.parametrize("num_tokens", [1, 37, 1200])  # 1200: large enough to run in parallel
def test_writes_exactly_the_given_slots(backend: str, dtype: torch.dtype, num_kv_heads: int, head_dim: int,
                                        block_size: int, num_tokens: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ops.BACKEND_ENV, backend)
    gen = torch.Generator().manual_seed(num_tokens)
    num_blocks = num_tokens // block_size + 4
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), math.nan, dtype=dtype)
    v_cache = torch.full_like(k_cache, math.nan)
    key, value = fused_kv(num_tokens, num_kv_heads, head_dim, dtype, gen)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]

    ops.write_kv_cache(key, value, k_cache, v_cache, slots)

    flat_k, flat_v = k_cache.view(-1, num_kv_heads, head_dim), v_cache.view(-1, num_kv_heads, head_dim)
    assert torch.equal(flat_k[slots], key) and torch.equal(flat_v[slots], value)
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots] = False
    assert flat_k[untouched].isnan().all() and flat_v[untouched].isnan().all()


@needs_cpp
def test_cpp_accepts_int32_slots_and_strided_last_dim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ops.BACKEND_ENV, "cpp")
    k_cache = torch.zeros(4, 16, 2, 8)
    v_cache = torch.zeros_like(k_cache)
    key = torch.randn(8, 2, 5).transpose(0, 2)  # (5, 2, 8), last stride 10
    value = torch.randn(5, 2, 8)
    slots = torch.tensor([3, 17, 40, 63, 0], dtype=torch.int32)
    ops.write_kv_cache(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache.view(-1, 2, 8)[slots.long()], key)
    assert torch.equal(v_cache.view(-1, 2, 8)[slots.long()], value)


@needs_cpp
def test_cpp_rejects_bad_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ops.BACKEND_ENV, "cpp")
    k_cache = torch.zeros(2, 4, 1, 8)
    v_cache = torch.zeros_like(k_cache)
    key = value = torch.zeros(1, 1, 8)
    with pytest.raises(ValueError, match="slot_mapping"):
        ops.write_kv_cache(key, value, k_cache, v_cache, torch.tensor([8]))
    with pytest.raises(ValueError, match="slot_mapping"):
        ops.write_kv_cache(key, value, k_cache, v_cache, torch.tensor([-1]))
    with pytest.raises(ValueError, match="dtype"):
        ops.write_kv_cache(key.double(), value.double(), k_cache, v_cache, torch.tensor([0]))
    with pytest.raises(ValueError, match="contiguous"):
        ops.write_kv_cache(key, value, k_cache.transpose(0, 1), v_cache.transpose(0, 1), torch.tensor([0]))
