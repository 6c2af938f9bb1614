"""The engine's behaviour on the real model: requests, n > 1, seeds, stops, logprobs, abort, errors."""
from __future__ import annotations

import asyncio

import pytest
import torch

from engine import LLM, AsyncLLMEngine, SamplingParams
from engine.errors import InvalidRequestError, PromptTooLongError
from engine.loader.errors import ModelLoadError

QUESTION = [{"role": "user", "content": "Tell me a short story about a robot who learns to paint."}]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM("smollm2:135m", dtype=torch.float32, kv_cache_bytes=64 * 1024 * 1024)


def all_blocks_free(llm: LLM) -> bool:
    bm = llm.engine.block_manager
    return bm.num_free_blocks == bm.num_blocks and not llm.engine.has_unfinished_requests()


def test_chat_answers_sensibly(llm: LLM) -> None:
    [result] = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                        SamplingParams(temperature=0, max_tokens=20))
    assert "Paris" in result.outputs[0].text
    assert result.outputs[0].finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens == len(result.prompt_token_ids)


def test_max_tokens_finishes_with_length(llm: LLM) -> None:
    [result] = llm.chat(QUESTION, SamplingParams(temperature=0, max_tokens=5))
    out = result.outputs[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"
    assert result.usage.completion_tokens == 5
    assert all_blocks_free(llm)


def test_n_choices_share_the_prompt_blocks(llm: LLM) -> None:
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=12)
    [result] = llm.chat(QUESTION, params)
    assert [o.index for o in result.outputs] == [0, 1, 2, 3]
    assert len({tuple(o.token_ids) for o in result.outputs}) > 1
    assert result.usage.completion_tokens == sum(len(o.token_ids) for o in result.outputs)
    # Siblings wait for the first choice's prefill and take its full blocks from the cache.
    assert result.usage.prompt_tokens == len(result.prompt_token_ids)
    assert all_blocks_free(llm)


def test_siblings_hold_the_same_physical_blocks(llm: LLM) -> None:
    engine = llm.engine
    tok = llm.tokenizer
    ids = tok.encode(tok.apply_chat_template(QUESTION * 1, add_generation_prompt=True), add_special_tokens=False)
    # ignore_eos: a sibling that drew EOS within the 4 steps would have freed its blocks already
    engine.add_request("share", ids, SamplingParams(n=3, temperature=1.0, max_tokens=30, ignore_eos=True))
    for _ in range(4):
        engine.step()
    seqs = engine._requests["share"].seqs
    full = len(ids) // engine.config.block_size
    tables = [s.block_table[:full] for s in seqs]
    assert tables[0] == tables[1] == tables[2]
    assert all(engine.block_manager.blocks[b].ref_count == 3 for b in tables[0])
    engine.abort("share")
    assert all_blocks_free(llm)


def test_seed_reproduces_whatever_the_batch(llm: LLM) -> None:
    params = SamplingParams(temperature=0.9, seed=1234, max_tokens=16)
    [alone] = llm.chat(QUESTION, params)
    others = [[{"role": "user", "content": f"Count to {i}."}] for i in range(3, 8)]
    together = llm.chat([*others[:2], QUESTION, *others[2:]],
                        [SamplingParams(temperature=1.0, max_tokens=20)] * 2 + [params] +
                        [SamplingParams(temperature=1.0, max_tokens=20)] * 3)
    assert together[2].outputs[0].token_ids == alone.outputs[0].token_ids


def test_stop_string_is_not_emitted(llm: LLM) -> None:
    [free] = llm.chat(QUESTION, SamplingParams(temperature=0, max_tokens=40))
    text = free.outputs[0].text
    words = text.split()
    stop = words[min(5, len(words) - 1)]
    [stopped] = llm.chat(QUESTION, SamplingParams(temperature=0, max_tokens=40, stop=[stop]))
    out = stopped.outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert stop not in out.text and text.startswith(out.text)


def test_stop_token_ids(llm: LLM) -> None:
    [free] = llm.chat(QUESTION, SamplingParams(temperature=0, max_tokens=10))
    stop_id = free.outputs[0].token_ids[3]
    [stopped] = llm.chat(QUESTION, SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_id]))
    assert stopped.outputs[0].token_ids == free.outputs[0].token_ids[:4]
    assert stopped.outputs[0].stop_reason == stop_id


def test_ignore_eos_runs_to_max_tokens(llm: LLM) -> None:
    [result] = llm.chat([{"role": "user", "content": "Say yes."}],
                        SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))
    assert len(result.outputs[0].token_ids) == 64


def test_logprobs_match_the_greedy_choice(llm: LLM) -> None:
    [result] = llm.chat(QUESTION, SamplingParams(temperature=0, max_tokens=6, logprobs=3))
    out = result.outputs[0]
    assert len(out.logprobs) == 6
    for token_id, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == token_id and lp.top[0][0] == token_id
        assert lp.logprob == pytest.approx(lp.top[0][1]) and lp.logprob <= 0
        assert [p for _, p in lp.top] == sorted((p for _, p in lp.top), reverse=True)


def test_abort_frees_blocks_at_once(llm: LLM) -> None:
    engine = llm.engine
    engine.add_request("gone", [1, 2, 3, 4] * 20, SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.load().num_running == 1
    output = engine.abort("gone")
    assert output.finished and output.deltas[0].finish_reason == "abort"
    assert output.usage.completion_tokens == 2
    assert all_blocks_free(llm)


def test_prompt_too_long_is_refused(llm: LLM) -> None:
    engine = llm.engine
    with pytest.raises(PromptTooLongError, match="maximum context length"):
        engine.add_request("long", [5] * engine.max_model_len, SamplingParams())
    with pytest.raises(PromptTooLongError) as err:
        engine.add_request("long2", [5] * 10, SamplingParams(max_tokens=engine.max_model_len))
    assert err.value.param == "max_tokens"
    assert all_blocks_free(llm)


def test_bad_prompts_are_refused(llm: LLM) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate([[]], SamplingParams())
    with pytest.raises(InvalidRequestError, match="token ids"):
        llm.generate([[1, 10**9]], SamplingParams())
    assert all_blocks_free(llm)


def test_missing_and_corrupt_models(tmp_path) -> None:
    with pytest.raises(ModelLoadError):
        LLM(str(tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="bad.gguf"):
        LLM(str(bad))
    with pytest.raises(ModelLoadError, match="smollm2:135m"):
        LLM("no-such-model:1b")


def test_async_generate_streams_and_abort_on_close(llm: LLM) -> None:
    engine = AsyncLLMEngine(llm.engine)

    async def main() -> tuple[str, int]:
        text = ""
        async for out in engine.generate([1, 2, 3, 4, 5], SamplingParams(temperature=0, max_tokens=8)):
            text += "".join(d.text for d in out.deltas)
            final = out
        stream = engine.generate([1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True))
        await stream.__anext__()
        await stream.aclose()  # a client that goes away
        with pytest.raises(InvalidRequestError):
            async for _ in engine.generate([], SamplingParams()):
                pass
        # A duplicate id is refused without disturbing the request that holds it.
        first = engine.generate([7, 8, 9], SamplingParams(temperature=0, max_tokens=6), request_id="dup")
        await first.__anext__()
        with pytest.raises(InvalidRequestError, match="already running"):
            await engine.generate([1, 2], SamplingParams(), request_id="dup").__anext__()
        async for out in first:
            last = out
        assert last.finished and last.usage.completion_tokens == 6
        return text, final.usage.completion_tokens

    try:
        text, completion_tokens = asyncio.run(main())
        assert completion_tokens == 8 and text
        for _ in range(100):
            if all_blocks_free(llm):
                break
            asyncio.run(asyncio.sleep(0.02))
        assert all_blocks_free(llm)
    finally:
        engine.shutdown()


def test_async_concurrent_streams_get_their_own_outputs(llm: LLM) -> None:
    # Outputs of one step travel to the loop together (async_engine._deliver_step): each stream must
    # still get exactly its own tokens, the same as when it runs alone.
    prompts = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    alone = [out.outputs[0].token_ids for out in llm.generate(prompts, params)]
    engine = AsyncLLMEngine(llm.engine)

    async def collect(prompt: list[int]) -> list[int]:
        tokens: list[int] = []
        async for out in engine.generate(prompt, params):
            tokens += [t for d in out.deltas for t in d.token_ids]
        return tokens

    async def main() -> list[list[int]]:
        return list(await asyncio.gather(*(collect(p) for p in prompts)))

    try:
        assert asyncio.run(main()) == alone
    finally:
        engine.shutdown()


def test_async_engine_builds_on_its_thread_and_reports_load_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError):
        AsyncLLMEngine(lambda: LLM(str(tmp_path / "missing.gguf")).engine)
    engine = AsyncLLMEngine(lambda: LLM("smollm2:135m", dtype=torch.float32, kv_cache_bytes=16 * 1024 * 1024).engine)
    try:
        async def main() -> int:
            async for out in engine.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=3)):
                last = out
            return last.usage.completion_tokens

        assert asyncio.run(main()) == 3
    finally:
        engine.shutdown()
