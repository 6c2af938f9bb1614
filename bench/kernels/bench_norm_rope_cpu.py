"""Times RMSNorm-with-residual and rotary embedding: the torch formulas of
engine/models/layers.py against the C++ ops of engine/kernels/norm_rope.py.

Run from the repository root after building the extension:
    python -m bench.kernels.bench_norm_rope_cpu [--rounds R] [--tokens 1,32] [--dtypes bfloat16,float32]

Shapes are SmolLM2-135M's (hidden 576, 9 query / 3 kv heads of 64). The machine
is shared and noisy, so implementations run interleaved, round after round, and
a figure is the median over rounds of a round's median call time (microseconds).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from engine.kernels import norm_rope, reference

HIDDEN, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 576, 9, 3, 64
EPS = 1e-5


def round_median(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cases(tokens: int, dtype: torch.dtype) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    weight = torch.ones(HIDDEN, dtype=dtype)

    def norm(x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return reference.add_rms_norm(x, residual, weight, EPS)

    x = torch.randn(tokens, HIDDEN).to(dtype)
    residual = torch.randn(tokens, HIDDEN).to(dtype)
    q_size, kv_size = NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM
    qkv = torch.randn(tokens, q_size + 2 * kv_size).to(dtype)
    q = qkv[:, :q_size].view(tokens, NUM_HEADS, HEAD_DIM)
    k = qkv[:, q_size:q_size + kv_size].view(tokens, NUM_KV_HEADS, HEAD_DIM)
    angles = torch.rand(tokens, 1, HEAD_DIM) * 6.28
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    fused, rotary_ = norm_rope.fused_add_rms_norm, norm_rope.rotary_
    return {
        "rms_norm": (lambda: norm(x), lambda: fused(x, None, weight, EPS)),
        "add_rms_norm": (lambda: norm(x, residual), lambda: fused(x, residual, weight, EPS)),
        # Rotating the same buffer again and again is fine for timing (values stay bounded: |cos|, |sin| <= 1).
        "rotary": (lambda: reference.rotary(q, k, cos, sin), lambda: rotary_(q, k, cos, sin)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200, help="calls per implementation per round")
    parser.add_argument("--tokens", default="1,32")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    args = parser.parse_args()
    if not norm_rope.supported():
        raise SystemExit("engine._C is not built with the norm/rope kernels")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; microseconds per call (median)")
    print(f"{'op':<14} {'dtype':<9} {'T':>4} {'torch':>9} {'C++':>9} {'speedup':>8}")
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for tokens in (int(t) for t in args.tokens.split(",")):
            for name, (ref, op) in cases(tokens, dtype).items():
                for fn in (ref, op):  # warm up
                    round_median(fn, 20)
                ref_times, op_times = [], []
                for _ in range(args.rounds):
                    ref_times.append(round_median(ref, args.calls))
                    op_times.append(round_median(op, args.calls))
                t_ref, t_op = statistics.median(ref_times) * 1e6, statistics.median(op_times) * 1e6
                print(f"{name:<14} {dtype_name:<9} {tokens:>4} {t_ref:>9.2f} {t_op:>9.2f} {t_ref / t_op:>7.1f}x")


if __name__ == "__main__":
    main()
