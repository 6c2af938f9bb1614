"""Ledger rows equal the engine's counts (whole, streamed, n > 1, several prompts, a client leaving),
and the engine's cumulative usage comments, on the real model."""
from __future__ import annotations

import json
import socket
import time

import pytest

from gateway.http import Router
from gateway.openai import ServingContext, add_openai_routes

from tests.gateway.serve_stack import CAPITAL, MODEL, Running, all_blocks_free, open_stream, raw_post


def generated(running: Running) -> int:
    """Tokens the engine has sampled since it started (its own counter, not the API's usage)."""
    return running.engine.engine.stats_snapshot().generation_tokens


def ledger_rows(running: Running) -> list:
    assert running.tenancy is not None
    return running.tenancy.store.usage("test", 0)


def ledger_counts(row: object) -> tuple[int, int, int, int]:
    return row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens  # type: ignore[attr-defined]


def usage_counts(usage: dict) -> tuple[int, int, int, int]:
    return (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], usage["completion_tokens"],
            usage["completion_tokens_details"]["reasoning_tokens"])


def sse_data(body: bytes) -> list[bytes]:
    return [e[6:] for e in body.split(b"\n\n") if e.startswith(b"data: ")]


def billed(running: Running, path: str, body: dict) -> tuple[object, bytes, int]:
    """Sends one request through the gateway: (its ledger row, the raw answer, tokens the engine sampled)."""
    before, sampled = len(ledger_rows(running)), generated(running)
    status, answer = raw_post(running, path, json.dumps(body).encode())
    assert status == 200, answer
    rows = ledger_rows(running)  # durable before the answer's last byte
    assert len(rows) == before + 1 and rows[-1].status == 200
    return rows[-1], answer, generated(running) - sampled


def test_ledger_holds_the_engines_counts_whole_and_streamed(running: Running) -> None:
    base = {"model": MODEL, "messages": CAPITAL, "temperature": 0, "max_tokens": 4}
    row, answer, sampled = billed(running, "/v1/chat/completions", base)
    assert ledger_counts(row) == usage_counts(json.loads(answer)["usage"]) and row.output_tokens == sampled
    prompt_tokens = row.input_tokens
    # Streamed, no usage asked: none reaches the client, neither comment nor chunk; billed exactly.
    row, answer, sampled = billed(running, "/v1/chat/completions", {**base, "stream": True})
    assert b": usage" not in answer and b'"usage":{' not in answer
    assert (row.input_tokens, row.output_tokens) == (prompt_tokens, sampled) and sampled > 0
    # Usage asked: exactly OpenAI's one usage chunk, last before [DONE], equal to the ledger row.
    row, answer, sampled = billed(running, "/v1/chat/completions",
                                  {**base, "stream": True, "stream_options": {"include_usage": True}})
    events = sse_data(answer)
    usages = [json.loads(e)["usage"] for e in events if b'"usage":{' in e]
    assert b": usage" not in answer and len(usages) == 1 and events[-1] == b"[DONE]"
    assert json.loads(events[-2])["choices"] == [] and set(usages[0]) == {
        "prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"}
    assert ledger_counts(row) == usage_counts(usages[0]) and row.output_tokens == sampled


def test_ledger_counts_every_choice_and_every_prompt(running: Running) -> None:
    row, answer, sampled = billed(running, "/v1/chat/completions",
                                  {"model": MODEL, "messages": CAPITAL, "n": 3, "max_tokens": 3, "ignore_eos": True,
                                   "stream": True, "stream_options": {"include_usage": True}})
    usage = json.loads(sse_data(answer)[-2])["usage"]
    assert ledger_counts(row) == usage_counts(usage) and row.output_tokens == sampled == 9
    prompts = ["The capital of France is", "One, two,", "Once upon a time"]
    row, answer, sampled = billed(running, "/v1/completions",
                                  {"model": MODEL, "prompt": prompts, "n": 2, "max_tokens": 2, "ignore_eos": True,
                                   "stream": True})
    assert b": usage" not in answer and b'"usage":{' not in answer
    assert row.output_tokens == sampled == 12
    # The engine encodes a text prompt with the tokenizer's defaults.
    assert row.input_tokens == sum(len(running.engine.tokenizer.encode(p)) for p in prompts)


def test_a_client_leaving_mid_stream_pays_what_the_engine_produced(running: Running) -> None:
    prompt_tokens = client_usage(running)["prompt_tokens"]
    before, sampled = len(ledger_rows(running)), generated(running)
    sock = open_stream(running, 500)
    received = b""
    while received.count(b'"content":"') < 6:  # the role delta and a few tokens
        received += sock.recv(65536)
    sock.close()
    deadline = time.monotonic() + 5
    while (len(ledger_rows(running)) == before or not all_blocks_free(running.engine)) and time.monotonic() < deadline:
        time.sleep(0.02)
    row = ledger_rows(running)[-1]
    assert len(ledger_rows(running)) == before + 1 and row.status == 499 and b": usage" not in received
    # The engine's own prompt count, not the gateway's estimate; every token the client received is
    # billed, and no more than the engine sampled (the step in flight when the abort landed is not).
    assert row.input_tokens == prompt_tokens
    assert received.count(b'"content":"') - 1 <= row.output_tokens <= generated(running) - sampled < 500


@pytest.mark.parametrize("path,fields", [("/v1/chat/completions", {"messages": CAPITAL}),
                                         ("/v1/completions", {"prompt": ["Once upon a time", "Paris is"], "n": 2})])
def test_a_client_leaving_a_whole_answer_stops_it_and_pays_what_was_made(running: Running, path: str,
                                                                         fields: dict) -> None:
    # Our engine stops the request at the gateway's word (its abort tag) instead of generating its
    # 1000 tokens for nobody, and answers the gateway with what was made, which is billed.
    before, sampled = len(ledger_rows(running)), generated(running)
    body = json.dumps({"model": MODEL, **fields, "max_tokens": 1000, "ignore_eos": True}).encode()
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                 f"authorization: Bearer {running.api_key}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 10
    while generated(running) - sampled < 8 and time.monotonic() < deadline:  # the engine is at work on it
        time.sleep(0.01)
    assert generated(running) - sampled >= 8, sock.recv(65536)
    sock.close()
    deadline = time.monotonic() + 10
    while (len(ledger_rows(running)) == before or not all_blocks_free(running.engine)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all_blocks_free(running.engine)
    row = ledger_rows(running)[-1]
    assert len(ledger_rows(running)) == before + 1 and row.status == 499
    assert 8 <= row.output_tokens <= generated(running) - sampled < 500


def client_usage(running: Running) -> dict:
    status, answer = raw_post(running, "/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": CAPITAL, "max_tokens": 1}).encode())
    assert status == 200
    return json.loads(answer)["usage"]


@pytest.fixture(scope="module")
def engine_front(running: Running) -> Running:
    """The engine's own OpenAI routes, no gateway: what the gateway reads."""
    router = Router()
    add_openai_routes(router, ServingContext(running.engine, [MODEL]))
    return running.start(router)


def test_an_abort_that_comes_before_its_answer_stops_it_as_it_starts(running: Running) -> None:
    # The gateway's client left while the request was still on its way: the engine keeps the tag and
    # stops the answer as soon as it is registered, instead of generating 1000 tokens for nobody.
    ctx = ServingContext(running.engine, [MODEL])
    router = Router()
    add_openai_routes(router, ctx)
    front = running.start(router)
    assert ctx.abort_tagged("left-early") == 0
    sampled = generated(running)
    body = json.dumps({"model": MODEL, "messages": CAPITAL, "max_tokens": 1000, "ignore_eos": True}).encode()
    status, answer = raw_post(front, "/v1/chat/completions", body, {"x-llmaas-abort-tag": "left-early"})
    assert status == 200, answer
    usage = json.loads(answer)["usage"]
    assert usage["completion_tokens"] == generated(running) - sampled < 50
    assert "left-early" not in ctx.early_aborts and not ctx.tagged
    # Another tag is not stopped by it.
    status, answer = raw_post(front, "/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": CAPITAL, "max_tokens": 5, "ignore_eos": True}).encode(),
        {"x-llmaas-abort-tag": "stays"})
    assert status == 200 and json.loads(answer)["usage"]["completion_tokens"] == 5


def test_early_aborts_are_bounded_in_number_and_time(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.openai import serving

    ctx = ServingContext(running.engine, [MODEL])
    monkeypatch.setattr(serving, "EARLY_ABORTS_MAX", 3)
    for n in range(5):
        ctx.abort_tagged(f"t{n}")
    assert list(ctx.early_aborts) == ["t2", "t3", "t4"]
    now = time.monotonic()
    monkeypatch.setattr(serving.time, "monotonic", lambda: now + serving.EARLY_ABORT_S + 1)
    ctx.abort_tagged("late")
    assert list(ctx.early_aborts) == ["late"]


def comments(answer: bytes) -> list[dict]:
    return [json.loads(e[len(b": usage "):]) for e in answer.split(b"\n\n") if e.startswith(b": usage ")]


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": CAPITAL, "n": 2}),
    ("/v1/completions", {"prompt": ["The capital of France is", "One, two,"], "n": 2}),
])
def test_the_engine_sends_cumulative_usage_comments_when_asked(engine_front: Running, path: str, body: dict) -> None:
    body = {"model": MODEL, "max_tokens": 3, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, **body}
    status, plain = raw_post(engine_front, path, json.dumps({**body, "max_tokens": 1}).encode())
    assert status == 200 and b": usage" not in plain  # only for who asks
    status, answer = raw_post(engine_front, path, json.dumps(body).encode(), {"x-llmaas-usage": "comments"})
    seen = comments(answer)
    usage = json.loads(sse_data(answer)[-2])["usage"]
    # The prompt is counted before any token; completion tokens only grow; the last equals the usage.
    assert seen[0]["prompt_tokens"] == usage["prompt_tokens"] > 0 and seen[0]["completion_tokens"] == 0
    assert [c["completion_tokens"] for c in seen] == sorted(c["completion_tokens"] for c in seen)
    assert seen[-1] == {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
                        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                        "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"]}
    num_prompts = len(body.get("prompt", [""]))
    assert usage["completion_tokens"] == 3 * 2 * num_prompts
    # Each content chunk is covered by a comment sent before it.
    delivered = 0
    for event in answer.split(b"\n\n"):
        if event.startswith(b": usage "):
            covered = json.loads(event[len(b": usage "):])["completion_tokens"]
        elif b'"content":"' in event and b'"content":""' not in event or b'"text":"' in event:
            delivered += 1
            assert delivered <= covered


def test_answers_sharing_a_tag_stay_named_by_it_until_each_ends(running: Running) -> None:
    # The first to end removed the tag: the other's abort then found nothing and was remembered as
    # an early abort instead, while that answer went on.
    import asyncio

    from gateway.http import Request

    ctx = ServingContext(running.engine, [MODEL])

    async def test() -> None:
        request = Request(method="POST", path="/v1/chat/completions", query_string="",
                          headers={"x-llmaas-abort-tag": "same"}, body=b"", client=None)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        a = asyncio.ensure_future(ctx.whole(request, ["a-0"], first))
        b = asyncio.ensure_future(ctx.whole(request, ["b-0", "b-1"], second))
        await asyncio.sleep(0)
        first.set_result("done")
        assert await a == "done"
        assert ctx.abort_tagged("same") == 2 and "same" not in ctx.early_aborts  # b's two requests
        second.set_result("done")
        await b
        assert not ctx.tagged

    asyncio.run(test())


def test_chat_template_kwargs_reach_the_template_and_reserved_names_are_refused(running: Running) -> None:
    # A Qwen3-like switch: the template renders a longer prompt unless enable_thinking is false.
    template = ("{% for m in messages %}{{ m.content }}{% endfor %}"
                "{% if enable_thinking is defined and not enable_thinking %} no thinking today{% endif %}")
    router = Router()
    add_openai_routes(router, ServingContext(running.engine, [MODEL], chat_template=template))
    front = running.start(router)

    def prompt_tokens(**extra: object) -> int:
        body = {"model": MODEL, "messages": CAPITAL, "max_tokens": 1, **extra}
        status, answer = raw_post(front, "/v1/chat/completions", json.dumps(body).encode())
        assert status == 200, answer
        return json.loads(answer)["usage"]["prompt_tokens"]

    plain = prompt_tokens()
    assert prompt_tokens(chat_template_kwargs={"enable_thinking": True}) == plain
    assert prompt_tokens(chat_template_kwargs={"enable_thinking": False}) > plain
    for kwargs, named in (({"messages": []}, "'messages' is set by the server"),
                          ({"tools": [{"type": "function"}]}, "'tools' is set by the server"),
                          ({"not a name": 1}, "'not a name' is not a template variable name")):
        body = {"model": MODEL, "messages": CAPITAL, "max_tokens": 1, "chat_template_kwargs": kwargs}
        status, answer = raw_post(front, "/v1/chat/completions", json.dumps(body).encode())
        error = json.loads(answer)["error"]
        assert status == 400 and error["param"] == "chat_template_kwargs" and named in error["message"]
    body = {"model": MODEL, "messages": CAPITAL, "chat_template_kwargs": ["enable_thinking"]}
    status, answer = raw_post(front, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400 and "chat_template_kwargs" in json.loads(answer)["error"]["message"]
