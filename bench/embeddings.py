"""Embedding throughput: prompt tokens/s of the engine's encoder path (`--task embed`) against transformers'
forward pass on the same token ids, in one run, on the shape of the catalog's granite-embedding:278m.

    python -m bench.embeddings [--prompts 32] [--prompt-len 128] [--rounds 3] [--threads N] [--vocab 32000]

The model: an XLMRobertaModel of granite-embedding-278m's shape (12 layers, hidden 768, 12 heads,
intermediate 3072, 514 positions) with random weights, saved once as a folder in bf16 (no Hugging
Face access is needed). Its vocabulary is --vocab rows, not the real 250,002: a lookup costs the same
whatever the table's size, and the folder saves in seconds.
- `engine`: LLMEngine(task="embed", bf16) on the folder: each round adds --prompts requests of
  --prompt-len token ids and steps until all are pooled (CLS, normalised);
- `transformers`: XLMRobertaModel in bf16, one forward of the same prompts as one batch, the CLS
  vectors normalised.
Each runs in its own process, one after the other, then in reverse order: a warm-up round, then
--rounds measured ones; a figure is the median over all measured rounds, new ids each round.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
             max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def prompt_ids(round_index: int, prompts: int, length: int, vocab: int) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(2000 + round_index)
    return torch.randint(3, vocab, (prompts, length), generator=gen).tolist()  # 0-2: bos, pad, eos


def make_folder(folder: Path, vocab: int) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig(vocab_size=vocab, **SHAPE),
                                         add_pooling_layer=False)
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t3"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))


def run_engine(folder: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    import torch

    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine

    torch.set_num_threads(args.threads)
    engine = LLMEngine(folder, EngineConfig(task="embed", dtype=torch.bfloat16, max_num_seqs=max(args.prompts, 1)))
    seconds = []
    for r in range(args.rounds + 1):
        for i, ids in enumerate(prompt_ids(r, args.prompts, args.prompt_len, args.vocab)):
            engine.add_embedding_request(f"{r}-{i}", ids)
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
        if r > 0:  # round 0 warms up
            seconds.append(time.perf_counter() - start)
    queue.put(seconds)


def run_transformers(folder: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    model = transformers.XLMRobertaModel.from_pretrained(folder, torch_dtype=torch.bfloat16, add_pooling_layer=False)
    model.eval()
    seconds = []
    with torch.inference_mode():
        for r in range(args.rounds + 1):
            ids = torch.tensor(prompt_ids(r, args.prompts, args.prompt_len, args.vocab))
            start = time.perf_counter()
            cls = model(input_ids=ids).last_hidden_state[:, 0].float()
            torch.nn.functional.normalize(cls, dim=-1).tolist()
            if r > 0:
                seconds.append(time.perf_counter() - start)
    queue.put(seconds)


RUNNERS = {"engine": run_engine, "transformers": run_transformers}


def measure(name: str, folder: str, args: argparse.Namespace) -> list[float]:
    ctx = mp.get_context("spawn")  # a fresh interpreter: no torch state shared between the two
    queue = ctx.Queue()
    proc = ctx.Process(target=RUNNERS[name], args=(folder, args, queue))
    proc.start()
    seconds = queue.get()
    proc.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    if not 1 <= args.prompt_len <= SHAPE["max_position_embeddings"] - 2:
        parser.error(f"--prompt-len must be 1..{SHAPE['max_position_embeddings'] - 2} (the position table)")
    tokens = args.prompts * args.prompt_len
    with tempfile.TemporaryDirectory() as scratch:
        make_folder(Path(scratch), args.vocab)
        samples: dict[str, list[float]] = {name: [] for name in RUNNERS}
        for order in (list(RUNNERS), list(reversed(RUNNERS))):
            for name in order:
                samples[name] += measure(name, scratch, args)
    rate = {name: tokens / statistics.median(s) for name, s in samples.items()}
    print(f"granite-embedding-278m shape (vocab {args.vocab}), bf16, {args.threads} threads; {args.prompts} prompts "
          f"x {args.prompt_len} tokens a round, median of {len(samples['engine'])} rounds")
    print("| path | prompt tokens/s |\n|---|---|")
    for name, value in rate.items():
        print(f"| {name} | {value:,.0f} |")
    print(f"engine / transformers: {rate['engine'] / rate['transformers']:.2f}x")


if __name__ == "__main__":
    main()
