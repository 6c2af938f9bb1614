"""The real model in bf16 on the CPU kernels: a greedy sequence's tokens do not depend on what
shares its steps (batch size, other prompts) nor on a prefix-cache hit shortening its prefill.
(Users expect temperature 0 to repeat itself; the kernels sum each row in one order whatever the
batch: tests/kernels/test_linear_bf16.py.)"""
from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.kernels import linear

pytestmark = pytest.mark.skipif(not linear.supported(), reason="engine._C not built with the linear kernel")

QUESTION = [{"role": "user", "content": "Name three colours."}]
OTHERS = ["Write a haiku about rain.", "What is 17 times 23?", "Name a large city.", "Say hello in French.",
          "List two fruits.", "Describe a cat in five words."]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _ids(llm: LLM, content: str | list[dict]) -> list[int]:
    messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
    return llm.tokenizer.encode(llm.tokenizer.apply_chat_template(messages), add_special_tokens=False)


def test_greedy_tokens_are_the_same_alone_in_a_batch_and_after_a_cache_hit() -> None:
    llm = LLM("smollm2:135m", dtype=torch.bfloat16, kv_cache_bytes=64 * 2**20)
    prompt = _ids(llm, QUESTION)
    alone = llm.generate([prompt], GREEDY)[0].outputs[0].token_ids
    again = llm.generate([prompt], GREEDY)[0].outputs[0].token_ids  # its prefix now cached
    assert llm.engine.block_manager.num_prefix_hit_tokens > 0
    batch = llm.generate([_ids(llm, o) for o in OTHERS[:3]] + [prompt] + [_ids(llm, o) for o in OTHERS[3:]], GREEDY)
    assert again == alone
    assert batch[3].outputs[0].token_ids == alone
