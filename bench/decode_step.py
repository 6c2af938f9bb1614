"""Times the engine's decode step at a fixed batch: the figure kernel changes move.

    python -m bench.decode_step [--batch 32] [--steps 200] [--threads 2] [--so PATH] [--no-quantized-decode]
                                [--isa amx_bf16|avx512_bf16|...]
                                [--model smollm2:135m|GGUF|HF-FOLDER] [--load-format auto|dummy]

Adds --batch greedy requests (short chat-style prompts, ignore_eos) to the offline engine
(SmolLM2-135M by default, bf16), runs their prefill, then times each `LLMEngine.step()` until they finish:
prints the median, the 10th percentile and the mean of the step time, and the tokens/s the median gives.
Context grows from ~20 to ~20 + steps tokens over the run.

--so loads `engine._C` from another build (e.g. the previous commit's, built into a scratch
folder) so that two builds can be compared in alternating runs on this noisy machine; compare
runs of the same command, never numbers across sessions.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time


def load_extension(path: str) -> None:
    """Makes `engine._C` the module at `path` for everything imported afterwards."""
    spec = importlib.util.spec_from_file_location("engine._C", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"not an extension module: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["engine._C"] = module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--so", help="engine._C built elsewhere, for A/B runs")
    parser.add_argument("--no-quantized-decode", action="store_true",
                        help="decode from the bf16 weights only (EngineConfig.quantized_decode=False)")
    parser.add_argument("--model", default="smollm2:135m", help="catalog name, .gguf file or Hugging Face folder")
    parser.add_argument("--load-format", choices=["auto", "dummy"], default="auto",
                        help="dummy: random weights of an HF folder's shapes (config.json and tokenizer only)")
    parser.add_argument("--isa", help="the linear kernels' variant (default: the best the CPU runs)")
    args = parser.parse_args()
    if args.so:
        load_extension(args.so)
    import torch

    from engine import LLM, SamplingParams, _C

    if args.isa:
        _C.set_linear_isa(args.isa)

    llm = LLM(model=args.model, dtype=torch.bfloat16, num_threads=args.threads,
              quantized_decode=not args.no_quantized_decode, load_format=args.load_format)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=args.steps, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(str(i), f"Write a short story number {i} about a robot who learns to paint the sea.", params)
    while engine.scheduler.waiting:
        engine.step()
    engine.step()  # the last prefill chunk, or the first decode
    times = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    times.sort()
    median = statistics.median(times)
    print(f"batch {args.batch}: {len(times)} decode steps, median {median * 1e3:.2f} ms, "
          f"p10 {times[len(times) // 10] * 1e3:.2f} ms, mean {statistics.fmean(times) * 1e3:.2f} ms, "
          f"{args.batch / median:.1f} tokens/s at the median")


if __name__ == "__main__":
    main()
