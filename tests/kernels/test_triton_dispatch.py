"""The GPU branches of engine/kernels/ops.py: backend choice for CUDA tensors, and gpu_ops routing
decode and mixed batches to the right Triton kernel (run here in the interpreter on CPU tensors)."""
from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
pytest.importorskip("triton")

from engine.kernels import cuda_kernels, gpu_ops, ops  # noqa: E402
from engine.kernels.triton.testing import assert_attention_close, make_paged_batch  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


def test_gpu_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_ops.backend(None) == "triton" and gpu_ops.backend("") == "triton"
    assert gpu_ops.backend("torch") == "torch"
    monkeypatch.setattr(cuda_kernels, "_C_cuda", None)
    with pytest.raises(RuntimeError, match="LLMAAS_BUILD_CUDA"):
        gpu_ops.backend("cuda")


def test_gpu_backends_are_refused_for_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("triton", "cuda"):
        monkeypatch.setenv(ops.BACKEND_ENV, name)
        with pytest.raises(ValueError, match=ops.BACKEND_ENV):
            ops._backend_for(torch.zeros(1))


@pytest.mark.parametrize("seqs", [[(1, 7), (1, 30), (1, 1)], [(1, 7), (4, 12), (9, 9)]], ids=["decode", "mixed"])
@pytest.mark.parametrize("window", [0, 5])
def test_triton_routing_matches_dense(seqs: list[tuple[int, int]], window: int) -> None:
    batch = make_paged_batch(seqs, 4, 2, 16, 8, torch.float32, DEVICE)
    out = gpu_ops.paged_attention("triton", batch.query, batch.k_cache, batch.v_cache, batch.block_tables,
                                  batch.context_lens, batch.query_start_loc, batch.scale, batch.max_query_len,
                                  batch.max_context_len, window)
    assert_attention_close(out, batch, window)


def test_silu_and_mul_cpu_path_unchanged() -> None:
    x = torch.randn(3, 8)
    torch.testing.assert_close(ops.silu_and_mul(x), torch.nn.functional.silu(x[:, :4]) * x[:, 4:])
