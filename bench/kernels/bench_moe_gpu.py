"""The fused mixture-of-experts kernel (engine/kernels/triton/fused_moe.py) timed against its floor, next
to the per-expert torch loop it replaces on CUDA (engine/kernels/moe.py experts_forward).

    python3 bench/kernels/bench_moe_gpu.py --out OUTDIR            # on a CUDA machine
    python3 bench/kernels/bench_moe_gpu.py --out /tmp/kb --smoke   # CPU, Triton interpreter, tiny shapes

Floor: max(bytes / measured copy bandwidth, flops / measured bf16 matmul rate), the bytes being the
chosen experts' weights (3 * I * H each, read once however many tokens chose them) plus x, the output
and the intermediates, the flops 2 * T * top_k * 3 * I * H. One MoE layer of Mixtral-8x7B (8 experts,
top 2, H 4096, I 14336) and of Qwen3-30B-A3B (128 experts, top 8, H 2048, I 768), bf16, at decode
batches and a prefill chunk. Each shape cycles over 4 routings, so consecutive calls read other
experts and the L2 cache does not flatter a decode step. Timing as in bench_kernels_gpu.py (a CUDA
graph of 20 calls, median of 5 rounds; the torch loop syncs, so it runs eagerly). At decode batch 1
the default tiles race the other candidates (block_m, block_n, block_k, warps, stages).
Writes OUTDIR/moe.json and OUTDIR/moe.md (also printed).
"""
from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

import torch  # noqa: E402

from bench.kernels.bench_kernels_gpu import ceilings, measure, parse_args, write_report  # noqa: E402
from engine.kernels import moe  # noqa: E402
from engine.kernels.triton import fused_moe  # noqa: E402

# name: (experts, top_k, hidden, moe intermediate)
MODELS = {"mixtral-8x7b": (8, 2, 4096, 14336), "qwen3-30b-a3b": (128, 8, 2048, 768)}
TOKENS = [1, 8, 64, 256, 2048]
ROUTINGS = 4
SWEEP = [fused_moe.Tiles(16, 32, 128, 4, 4), fused_moe.Tiles(16, 64, 64, 4, 3), fused_moe.Tiles(16, 32, 64, 4, 4),
         fused_moe.Tiles(16, 64, 128, 4, 3), fused_moe.Tiles(16, 128, 64, 4, 3)]

Case = tuple[str, str, Callable[[], object], float, float]  # (kernel, shape, call, bytes, flops)


def model_cases(name: str, experts: int, top_k: int, hidden: int, inter: int, tokens: list[int],
                dtype: torch.dtype, device: str) -> list[Case]:
    gen = torch.Generator(device=device).manual_seed(0)
    w_gate_up = (torch.randn(experts, 2 * inter, hidden, generator=gen, device=device) / hidden ** 0.5).to(dtype)
    w_down = (torch.randn(experts, hidden, inter, generator=gen, device=device) / inter ** 0.5).to(dtype)
    expert_bytes = 3 * inter * hidden * dtype.itemsize
    out: list[Case] = []
    for t in tokens:
        x = torch.randn(t, hidden, generator=gen, device=device).to(dtype)
        routings = [moe.route(torch.randn(t, experts, generator=gen, device=device), top_k, True)
                    for _ in range(ROUTINGS)]
        chosen = sum(len(set(ids.flatten().tolist())) for _, ids in routings) / ROUTINGS
        pairs = t * top_k
        moved = chosen * expert_bytes + (2 * t * hidden + pairs * inter) * dtype.itemsize + pairs * hidden * 4
        flops = 2 * pairs * 3 * inter * hidden
        shape = f"{name} t{t}"
        cycle = itertools.cycle(routings)

        def fused(tiles: fused_moe.Tiles | None = None, x: torch.Tensor = x, cycle=cycle) -> torch.Tensor:
            weights, ids = next(cycle)
            return fused_moe.fused_moe(x, w_gate_up, w_down, weights, ids, tiles)

        def loop(x: torch.Tensor = x, cycle=cycle) -> torch.Tensor:
            weights, ids = next(cycle)
            none = [None] * experts
            return moe.experts_forward(x, weights, ids, w_gate_up.unbind(0), w_down.unbind(0), none, none)

        out.append(("fused_moe triton", shape, fused, moved, flops))
        if t == 1 and device == "cuda":
            for tiles in SWEEP:
                label = f"m{tiles.block_m}n{tiles.block_n}k{tiles.block_k}w{tiles.num_warps}s{tiles.num_stages}"
                out.append((f"fused_moe triton {label}", shape, lambda f=fused, c=tiles: f(c), moved, flops))
        if t <= 256 or SMOKE:
            out.append(("moe_loop torch", shape, loop, moved, flops))
    return out


def main() -> int:
    args = parse_args(__doc__)
    if not args.smoke and not torch.cuda.is_available():
        print("bench_moe_gpu: needs a CUDA GPU (torch sees none); --smoke runs tiny shapes in the Triton "
              "interpreter on CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.smoke else "cuda"
    bandwidth, matmul = ceilings(device, args.smoke)
    models = {"tiny": (4, 2, 40, 24)} if args.smoke else MODELS
    dtype = torch.float32 if args.smoke else torch.bfloat16
    rows: list[dict] = []
    failed = 0
    for name, (experts, top_k, hidden, inter) in models.items():
        for kernel, shape, fn, moved, flops in model_cases(name, experts, top_k, hidden, inter,
                                                            [1, 5] if args.smoke else TOKENS, dtype, device):
            failed |= measure(rows, kernel, shape, fn, moved, flops, device, bandwidth, matmul)
        if device == "cuda":
            torch.cuda.empty_cache()  # this model's experts, before the next model's
    write_report(Path(args.out), "moe", "Fused MoE", device, bandwidth, matmul, rows)
    return failed


if __name__ == "__main__":
    sys.exit(main())
