"""Times the C++ attention kernel against the torch reference on CPU.

Run from the repository root after building the extension:
    python -m bench.kernels.bench_attention_cpu [--dtype bfloat16] [--threads N] [--layers 30]
        [--isa avx512_bf16,avx512]

Shapes are SmolLM2's (9 query heads, 3 kv heads, head_dim 64) with the
engine's CPU block size (8 tokens; --block-size to change). Both backends run
with --threads torch threads. "GB/s", for pure decode
batches, is the K/V bytes the batch must read (each sequence's context, K and V,
once) divided by the time: the figure of merit of decode, which is memory-bound.
By default each call rereads the same K/V, so where it fits in the last-level
cache this is a cache bandwidth, above what a model's many layers get from DRAM.
--layers N gives each case N caches (in 2 MB pages, as the engine allocates them)
and calls cycle through them, as a step's layers do: with N = 30 (SmolLM2) the
K/V come from DRAM, the figure the model sees.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.kernels.timing import round_median
from engine.kernels import ops, reference, weight_arena

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 9, 3, 64
BLOCK_SIZE = 8  # the default of --block-size


@dataclass(frozen=True)
class Case:
    name: str
    seqs: tuple[tuple[int, int], ...]  # (query tokens, context length incl. them) per sequence


CASES = (
    Case("decode 32 x ctx 40..167 (chat, 128 out)", tuple((1, 40 + 4 * i) for i in range(32))),
    Case("decode 32 x ctx 256", ((1, 256),) * 32),
    Case("decode 8 x ctx 2048", ((1, 2048),) * 8),
    Case("prefill 512", ((512, 512),)),
    Case("mixed: chunk 128 @ ctx 384 + 31 decodes", ((128, 384),) + ((1, 256),) * 31),
)


def make_inputs(case: Case, dtype: torch.dtype, block_size: int = BLOCK_SIZE) -> dict[str, torch.Tensor | float | int]:
    q_lens = [q for q, _ in case.seqs]
    ctx_lens = [c for _, c in case.seqs]
    max_blocks = max(-(-c // block_size) for c in ctx_lens)
    num_blocks = len(case.seqs) * max_blocks
    k_cache = torch.randn(num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM).to(dtype)
    v_cache = torch.randn_like(k_cache)
    block_tables = torch.randperm(num_blocks, dtype=torch.int32).view(len(case.seqs), max_blocks)
    # The engine hands attention a head slice of the fused qkv projection.
    qkv = torch.randn(sum(q_lens), NUM_HEADS + 2 * NUM_KV_HEADS, HEAD_DIM).to(dtype)
    return {
        "query": qkv[:, :NUM_HEADS],
        "k_cache": k_cache,
        "v_cache": v_cache,
        "block_tables": block_tables,
        "context_lens": torch.tensor(ctx_lens, dtype=torch.int32),
        "query_start_loc": torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32),
        "scale": 1.0 / math.sqrt(HEAD_DIM),
        "max_query_len": max(q_lens),
        "max_context_len": max(ctx_lens),
    }


def median_ms(fn: Callable[[], object], rounds: int, min_time_s: float = 0.3) -> float:
    """The best, over rounds, of the median call time within a round.

    A round's median resists stray slow calls; the best round resists the
    machine's other tenants, which can delay a whole round.
    """
    fn()
    return min(round_median(fn, min_time_s) for _ in range(rounds)) * 1e3


def in_arena(t: torch.Tensor) -> torch.Tensor:
    """A copy of t in the engine's 2 MB pages (engine/kernels/weight_arena.py), as its KV cache is."""
    copy = weight_arena.empty(tuple(t.shape), t.dtype)
    return copy.copy_(t)


def cycle(fn: Callable[..., object], layers: list[dict]) -> Callable[[], object]:
    """A call of fn on the next of `layers`' inputs, round and round."""
    state = {"i": 0}

    def call() -> object:
        inputs = layers[state["i"] % len(layers)]
        state["i"] += 1
        return fn(**inputs)

    return call


def kv_bytes(case: Case, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return sum(c for _, c in case.seqs) * NUM_KV_HEADS * HEAD_DIM * 2 * elem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE)
    parser.add_argument("--isa", default=None, help="comma-separated kernel variants to compare (default: the best)")
    parser.add_argument("--layers", type=int, default=1, help="caches per case, cycled through (30: from DRAM)")
    args = parser.parse_args()
    if not ops.cpp_available():
        raise SystemExit("engine._C is not built: python setup.py build_ext --inplace")
    os.environ.pop(ops.BACKEND_ENV, None)  # ops.paged_attention must pick cpp
    torch.set_num_threads(args.threads)
    dtypes = (torch.float32, torch.bfloat16) if args.dtype == "both" else (getattr(torch, args.dtype),)
    torch.manual_seed(0)
    isas = args.isa.split(",") if args.isa else [ops._C.cpu_isa()]
    print(f"threads={args.threads}  H={NUM_HEADS} Hkv={NUM_KV_HEADS} D={HEAD_DIM} block={args.block_size} "
          f"layers={args.layers}")
    header = (f"{'case':<42} {'dtype':<9} {'isa':<12} {'cpp ms':>8} {'torch ms':>9} {'speedup':>8} "
              f"{'cpp GB/s':>9}")
    print(header)
    print("-" * len(header))
    default_isa = ops._C.cpu_isa()
    for case in CASES:
        for dtype in dtypes:
            layers = [make_inputs(case, dtype, args.block_size) for _ in range(args.layers)]
            if args.layers > 1:
                for inputs in layers:
                    for name in ("k_cache", "v_cache"):
                        inputs[name] = in_arena(inputs[name])  # type: ignore[arg-type]
            torch_ms = median_ms(cycle(reference.paged_attention, layers), args.rounds)
            for isa in isas:
                ops._C.set_cpu_isa(isa)
                try:
                    cpp_ms = median_ms(cycle(ops.paged_attention, layers), args.rounds)
                finally:
                    ops._C.set_cpu_isa(default_isa)
                decode = all(q_len == 1 for q_len, _ in case.seqs)
                gbs = f"{kv_bytes(case, dtype) / cpp_ms / 1e6:.1f}" if decode else "-"
                print(f"{case.name:<42} {str(dtype).removeprefix('torch.'):<9} {isa:<12} {cpp_ms:>8.3f} "
                      f"{torch_ms:>9.3f} {torch_ms / cpp_ms:>7.1f}x {gbs:>9}")


if __name__ == "__main__":
    main()
