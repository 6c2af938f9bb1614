"""Triton kernels for CUDA tensors (engine/kernels/ops.py dispatches to them).

One file per kernel family, each opening with its layout and design; the torch references live
in engine/kernels/reference.py (the fused MoE's in engine/kernels/moe.py), the tests in
tests/kernels/test_triton_*.py (run on CPU with TRITON_INTERPRET=1), the timings in
bench/kernels/bench_kernels_gpu.py and bench/kernels/bench_moe_gpu.py.
"""
from __future__ import annotations

import importlib.util


def available() -> bool:
    """Whether triton imports (it does not on every CPU-only install)."""
    return importlib.util.find_spec("triton") is not None


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
