"""Tiny random Hugging Face model folders the engine loads by path, and the greedy-parity check run on them."""
from __future__ import annotations

from pathlib import Path

import torch


def write_word_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer over the tiny vocabulary ("t0" .. "t{vocab_size - 1}"): the engine loads one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))


def save_folder(model: torch.nn.Module, folder: Path) -> Path:
    """`model` (a transformers causal LM) saved with a word-level tokenizer: a folder the engine serves."""
    model.save_pretrained(folder)
    write_word_tokenizer(folder, model.config.vocab_size)
    return folder


def assert_greedy_matches_transformers(folder: Path, hf_model: torch.nn.Module, max_tokens: int = 12) -> None:
    """Greedy tokens of three prompts (41, 9 and 23 tokens) run together through the engine in float32, in
    chunks of 32 tokens a step, equal transformers' greedy generation of each prompt alone."""
    from engine.llm import LLM
    from engine.sampling_params import SamplingParams

    gen = torch.Generator().manual_seed(7)
    vocab = hf_model.config.vocab_size
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in (41, 9, 23)]
    llm = LLM(str(folder), dtype=torch.float32, block_size=8, kv_cache_bytes=8 * 2**20, max_num_batched_tokens=32)

    results = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))

    for prompt, result in zip(prompts, results):
        with torch.inference_mode():
            want = hf_model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                     do_sample=False)[0, len(prompt):].tolist()
        assert result.outputs[0].token_ids == want
