"""Times the bf16 linear kernel against torch.nn.functional.linear in bf16 and fp32 on CPU.

Run from the repository root after building the extension:
    python -m bench.kernels.bench_linear_cpu [--threads N] [--rounds R] [--ms 1,8,32,128,512] [--isa ISA]

Shapes are SmolLM2-135M's linears (out N, in K). A model step reads every weight
from DRAM (270 MB of bf16 per token, far more than the L3 cache), so each call
here takes the next of several copies of its weight, together over twice the
L3's size; --warm-weights reuses one copy instead. The machine is shared and
noisy, so the three implementations run interleaved, round after round, and a
figure is the median over rounds of a round's median call time.
GFLOPS = 2*M*N*K / time. GB/s, at M = 1, is the weight's bytes (2 per element
in bf16, 4 in fp32) / time: decode streams each weight once, so this is the
figure of merit there. The kernel outputs bf16, like torch's bf16 linear.

"decode step" sums one token step's linears over the 30 layers plus the lm_head
(fp32 logits for the kernel), from the medians above, and also times such a step
through 30 distinct copies of each layer's weights (whole-model weight traffic).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.kernels.timing import round_median
from engine.kernels import linear

SHAPES = {"qkv": (960, 576), "o_proj": (576, 576), "gate_up": (3072, 576), "down": (576, 1536),
          "lm_head": (49152, 576)}
LAYER_SHAPES = ("qkv", "o_proj", "gate_up", "down")
NUM_LAYERS = 30
IMPLS = ("kernel", "torch bf16", "torch fp32")
COLD_BYTES = 64 << 20  # twice a 32 MiB L3


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int, min_time_s: float) -> dict[str, float]:
    """Seconds per call of each function: rounds alternate between them, in a rotating order."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(round_median(fns[name], min_time_s))
    return {name: statistics.median(s) for name, s in samples.items()}


class Weights:
    """One shape's weights in the three forms, in `copies` copies that calls cycle through."""

    def __init__(self, n: int, k: int, copies: int) -> None:
        weight = torch.randn(n, k).to(torch.bfloat16)
        self.bf16 = [weight.clone() for _ in range(copies)]
        self.fp32 = [w.float() for w in self.bf16]
        self.packed = [linear.pack(w) for w in self.bf16]
        self._next = itertools.cycle(range(copies))

    def fns(self, m: int, k: int, lm_head: bool = False) -> dict[str, Callable[[], object]]:
        x = torch.randn(m, k).to(torch.bfloat16)
        x32 = x.float()
        kernel_out = torch.float32 if lm_head else torch.bfloat16
        return {
            "kernel": lambda: linear.linear(x, self.packed[next(self._next)], kernel_out),
            "torch bf16": lambda: F.linear(x, self.bf16[next(self._next)]),
            "torch fp32": lambda: F.linear(x32, self.fp32[next(self._next)]),
        }


def bench_shapes(names: list[str], ms: list[int], rounds: int, min_time_s: float,
                 warm: bool) -> dict[tuple[str, int], dict]:
    header = (f"{'linear':<8} {'N':>5} {'K':>4} {'M':>4} | " + " | ".join(f"{name + ' us':>14} {'GFLOPS':>6}"
              for name in IMPLS) + f" | {'vs bf16':>7} {'vs fp32':>7} | GB/s kernel/bf16/fp32")
    print(header)
    print("-" * len(header))
    results = {}
    for name in names:
        n, k = SHAPES[name]
        weights = Weights(n, k, 1 if warm else -(-COLD_BYTES // (n * k * 2)))
        for m in ms:
            seconds = interleaved_medians(weights.fns(m, k), rounds, min_time_s)
            results[(name, m)] = seconds
            flops = 2 * m * n * k
            cells = " | ".join(f"{seconds[i] * 1e6:>14.1f} {flops / seconds[i] / 1e9:>6.1f}" for i in IMPLS)
            ratios = " ".join(f"{seconds[i] / seconds['kernel']:>6.2f}x" for i in IMPLS[1:])
            gbs = ""
            if m == 1:
                gbs = "/".join(f"{n * k * size / seconds[i] / 1e9:.1f}" for i, size in zip(IMPLS, (2, 2, 4)))
            print(f"{name:<8} {n:>5} {k:>4} {m:>4} | {cells} | {ratios} | {gbs}", flush=True)
        del weights
    return results


def bench_decode_steps(ms: list[int], results: dict, rounds: int) -> None:
    print("\ndecode step: 30 layers x (qkv, o_proj, gate_up, down) + lm_head")
    layers = {name: Weights(*SHAPES[name], NUM_LAYERS) for name in LAYER_SHAPES}
    lm_head = Weights(*SHAPES["lm_head"], 1)
    weight_mb = sum(n * k * 2 for n, k in (SHAPES[s] for s in LAYER_SHAPES)) * NUM_LAYERS / 1e6
    weight_mb += SHAPES["lm_head"][0] * SHAPES["lm_head"][1] * 2 / 1e6
    for m in ms:
        summed = {i: NUM_LAYERS * sum(results[(s, m)][i] for s in LAYER_SHAPES) + results[("lm_head", m)][i]
                  for i in IMPLS}
        per_layer = {s: layers[s].fns(m, SHAPES[s][1]) for s in LAYER_SHAPES}
        head = lm_head.fns(m, SHAPES["lm_head"][1], lm_head=True)

        def step(impl: str) -> Callable[[], None]:
            calls = [per_layer[s][impl] for s in LAYER_SHAPES] * NUM_LAYERS + [head[impl]]

            def run() -> None:
                for call in calls:
                    call()

            return run

        measured = interleaved_medians({i: step(i) for i in IMPLS}, rounds, min_time_s=0.0)
        for i in IMPLS:
            print(f"M={m:<4} {i:<11} sum of shapes {summed[i] * 1e3:8.2f} ms   measured step "
                  f"{measured[i] * 1e3:8.2f} ms   {m / measured[i]:8.1f} tokens/s   "
                  f"{weight_mb / 1e3 / measured[i]:5.1f} GB/s of bf16 weights")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds of calls per round and implementation")
    parser.add_argument("--ms", default="1,8,32,128,512", help="comma-separated batch sizes M")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated linears to time")
    parser.add_argument("--step-ms", default="1,32", help="M of the decode-step timing ('' to skip; needs all shapes)")
    parser.add_argument("--warm-weights", action="store_true", help="reuse one copy of each weight (cache-resident)")
    parser.add_argument("--isa", help="the kernel's variant (default: the best the CPU runs; see supported_linear_isas)")
    args = parser.parse_args()
    if not linear.supported():
        raise SystemExit("engine._C lacks the linear kernel: python setup.py build_ext --inplace")
    if args.isa:
        linear._C.set_linear_isa(args.isa)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ms = [int(m) for m in args.ms.split(",")]
    step_ms = [int(m) for m in args.step_ms.split(",") if m]
    print(f"threads={args.threads}  isa={linear._C.linear_isa()}  weights={'warm' if args.warm_weights else 'cold'}"
          f"  rounds={args.rounds}")
    names = args.shapes.split(",")
    if step_ms and set(names) != set(SHAPES):
        raise SystemExit("the decode-step timing needs every shape: pass --step-ms '' with --shapes")
    results = bench_shapes(names, sorted(set(ms) | set(step_ms)), args.rounds, args.min_time, args.warm_weights)
    if step_ms:
        bench_decode_steps(step_ms, results, args.rounds)


if __name__ == "__main__":
    main()
