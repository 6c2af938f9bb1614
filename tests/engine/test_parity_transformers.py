"""Exact greedy parity with transformers on SmolLM2-135M-Instruct, loaded by both from the same
GGUF and run in float32: same tokens one at a time, batched, with the prefix cache on and off,
and under a KV budget small enough to force preemption."""
from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from tests.conftest import SMOLLM2_GGUF_NAME, smollm2_dir

MAX_TOKENS = 48
SYSTEM = "You are a concise assistant. Answer in plain English."
QUESTIONS = [
    "Hi!",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three prime numbers greater than 100 and say why each is prime.",
    "Summarize this text: " + " ".join(
        f"Paragraph {i} says that scheduling, paging and batching make serving language models cheaper."
        for i in range(12)),
]


def conversations() -> list[list[dict]]:
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    convs[2] = [{"role": "system", "content": SYSTEM}, *convs[2]]
    convs[4] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hello! How can I help?"}, *convs[4]]
    return convs


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM("smollm2:135m", dtype=torch.float32)


@pytest.fixture(scope="module")
def prompts(llm: LLM) -> list[list[int]]:
    tok = llm.tokenizer
    return [tok.encode(tok.apply_chat_template(c, add_generation_prompt=True), add_special_tokens=False)
            for c in conversations()]


@pytest.fixture(scope="module")
def expected(prompts: list[list[int]]) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF_NAME, dtype=torch.float32)
    model.eval()
    outs = []
    with torch.inference_mode():
        for ids in prompts:
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=2)
            outs.append(gen[0, len(ids):].tolist())
    return outs


GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)


def token_ids(results: list) -> list[list[int]]:
    return [r.outputs[0].token_ids for r in results]


def test_prompts_cover_varied_lengths(prompts: list[list[int]]) -> None:
    lengths = sorted(len(p) for p in prompts)
    assert lengths[0] < 40 and lengths[-1] > 200


def test_one_at_a_time(llm: LLM, prompts: list[list[int]], expected: list[list[int]]) -> None:
    for ids, want in zip(prompts, expected):
        assert token_ids(llm.generate([ids], GREEDY)) == [want]


def test_all_in_one_batch(llm: LLM, prompts: list[list[int]], expected: list[list[int]]) -> None:
    assert token_ids(llm.generate(prompts, GREEDY)) == expected


def test_batch_with_prefix_cache_hits(llm: LLM, prompts: list[list[int]], expected: list[list[int]]) -> None:
    """Second round: every prompt's full blocks come from the prefix cache."""
    llm.generate(prompts, GREEDY)
    results = llm.generate(prompts, GREEDY)
    assert token_ids(results) == expected
    assert all(r.usage.cached_tokens > 0 for r, p in zip(results, prompts) if len(p) > 16)


def test_prefix_cache_off(prompts: list[list[int]], expected: list[list[int]]) -> None:
    llm = LLM("smollm2:135m", dtype=torch.float32, enable_prefix_caching=False)
    results = llm.generate(prompts, GREEDY)
    assert token_ids(results) == expected
    assert all(r.usage.cached_tokens == 0 for r in results)


def test_small_chunks_and_preemption(llm: LLM, prompts: list[list[int]], expected: list[list[int]]) -> None:
    """A KV budget that holds barely more than the longest request, and a token budget that
    splits prompts into many chunks: requests are preempted and recomputed, with the same tokens."""
    block_size = llm.engine.config.block_size
    per_block = llm.engine.runner.bytes_per_block()
    longest = max(len(p) for p in prompts) + MAX_TOKENS
    num_blocks = -(-longest // block_size) + 2
    small = LLM("smollm2:135m", dtype=torch.float32, kv_cache_bytes=num_blocks * per_block,
                max_num_batched_tokens=64)
    assert token_ids(small.generate(prompts, GREEDY)) == expected
    assert small.engine.scheduler.num_preemptions > 0
    assert small.engine.block_manager.num_free_blocks == num_blocks
