"""The offline API in the shape vLLM users know:

    llm = LLM(model="smollm2:135m")
    results = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=48))
    results[0].outputs[0].text
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence as Seq

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import CompletionOutput, CompletionResult, RequestOutput
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

Conversation = list[dict]


class LLM:
    def __init__(self, model: str = "smollm2:135m", **engine_options: object) -> None:
        """engine_options are EngineConfig fields (block_size, kv_cache_bytes, max_num_seqs, ...)."""
        known = {f.name for f in dataclasses.fields(EngineConfig)}
        unknown = sorted(set(engine_options) - known)
        if unknown:
            raise TypeError(f"unknown engine options: {', '.join(unknown)}")
        self.engine = LLMEngine(model, EngineConfig(**engine_options))  # type: ignore[arg-type]
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | Seq[str] | Seq[list[int]],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None) -> list[CompletionResult]:
        """One result per prompt, in order. A prompt is text (tokenized as is) or token ids."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        prompt_list = list(prompts)
        params_list = _broadcast(sampling_params, len(prompt_list))
        results: dict[str, CompletionResult] = {}
        order: list[str] = []
        for prompt, params in zip(prompt_list, params_list):
            request_id = f"offline-{next(self._ids)}"
            ids = self.engine.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            self.engine.add_request(request_id, ids, params)
            order.append(request_id)
            results[request_id] = CompletionResult(
                request_id, prompt if isinstance(prompt, str) else None, ids,
                [CompletionOutput(i, "", [], None) for i in range(params.n)])
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                _accumulate(results[output.request_id], output)
        return [results[r] for r in order]

    def chat(self, conversations: Conversation | Seq[Conversation],
             sampling_params: SamplingParams | Seq[SamplingParams] | None = None) -> list[CompletionResult]:
        """Applies the model's chat template (with the generation prompt) to each conversation first."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]  # type: ignore[list-item]
        tok = self.engine.tokenizer
        prompts = [tok.encode(tok.apply_chat_template(list(c), add_generation_prompt=True), add_special_tokens=False)
                   for c in conversations]
        return self.generate(prompts, sampling_params)


def _broadcast(params: SamplingParams | Seq[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, SamplingParams):
        return [params] * n
    if len(params) != n:
        raise ValueError(f"{len(params)} sampling params for {n} prompts")
    return list(params)


def _accumulate(result: CompletionResult, output: RequestOutput) -> None:
    for delta in output.deltas:
        out = result.outputs[delta.index]
        out.text += delta.text
        out.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            out.logprobs = (out.logprobs or []) + delta.logprobs
        if delta.finish_reason is not None:
            out.finish_reason, out.stop_reason = delta.finish_reason, delta.stop_reason
    if output.usage is not None:
        result.usage = output.usage
