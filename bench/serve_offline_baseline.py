"""The offline engine on the same prompts as one `bench/serve_load.py` level, for the served /
offline throughput ratio (the serving goal: served >= 90% of offline).

    python bench/serve_offline_baseline.py [--concurrency 32] [--output-len 128] [--input-len 64]
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.serve_load import prompt_text, request_tag
from engine import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32, help="the serve_load level to mirror")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    llm = LLM("smollm2:135m", dtype=getattr(torch, args.dtype))
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)

    def conversations(warmup: bool, n: int) -> list[list[dict]]:
        return [[{"role": "user", "content": prompt_text(request_tag(args.concurrency, i, warmup=warmup), args.input_len)}]
                for i in range(n)]

    llm.chat(conversations(True, 2), params)
    start = time.perf_counter()
    results = llm.chat(conversations(False, args.concurrency), params)
    wall = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for r in results for o in r.outputs)
    print(f"offline: {len(results)} requests, {tokens} output tokens in {wall:.2f}s = {tokens / wall:.1f} output tok/s")


if __name__ == "__main__":
    main()
