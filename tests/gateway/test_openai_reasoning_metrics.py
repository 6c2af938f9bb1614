"""Reasoning split, engine metrics and several streamed prompts, on the real model: through the
serve stack, or the engine server's own routes on the same engine."""
from __future__ import annotations

import http.client

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.http import Router
from gateway.openai import ServingContext, add_openai_routes
from gateway.openai.reasoning import ReasoningMarkers

from tests.gateway.serve_stack import MODEL, Running


# -- reasoning split, end to end: a few-shot template makes the real model write <think> blocks ----

FEW_SHOT_THINKING = (
    "{% for m in messages %}{% for _ in range(2) %}Question: {{ m.content }}\nAnswer: <think>The user asks "
    "about {{ m.content }}. Let me think.</think> Paris.\n{% endfor %}{% endfor %}"
    "Question: {{ messages[-1].content }}\nAnswer:"
)
FRANCE = [{"role": "user", "content": "the capital of France"}]


@pytest.fixture(scope="module")
def thinking(running: Running) -> Running:
    router = Router()
    add_openai_routes(router, ServingContext(running.engine, [MODEL], chat_template=FEW_SHOT_THINKING,
                                             reasoning_markers=ReasoningMarkers()))
    return running.start(router)


def test_reasoning_content_split_from_a_real_model(thinking: Running) -> None:
    client = openai.OpenAI(base_url=thinking.base_url, api_key="unused", max_retries=0)
    kwargs = {"model": MODEL, "messages": FRANCE, "temperature": 0, "max_tokens": 40, "stop": ["\n"]}
    whole = client.chat.completions.create(**kwargs)
    message = whole.choices[0].message
    assert message.reasoning_content == "The user asks about the capital of France. Let me think."
    assert message.content.strip() == "Paris." and "<think>" not in message.content
    reasoning_tokens = whole.usage.completion_tokens_details.reasoning_tokens
    tok = thinking.engine.tokenizer
    assert len(tok.encode(message.reasoning_content, add_special_tokens=False)) < reasoning_tokens
    assert reasoning_tokens < whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed_reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert streamed_reasoning == message.reasoning_content
    assert "".join(d.content or "" for d in deltas) == message.content
    assert sum(1 for d in deltas if getattr(d, "reasoning_content", None)) > 1  # streamed as it came
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == reasoning_tokens


# -- /metrics after known traffic --------------------------------------------------------------------

def scrape(running: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/plain")
    text = response.read().decode()
    conn.close()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_after_known_traffic(running: Running) -> None:
    own = Router()
    add_openai_routes(own, ServingContext(running.engine, [MODEL]))
    fresh = running.start(own)  # its own registry: request metrics start from zero
    before = scrape(fresh)
    client = openai.OpenAI(base_url=fresh.base_url, api_key="unused", max_retries=0)
    prompt = list(range(1000, 1020))  # 20 tokens: two full blocks of 8 can be reused
    for _ in range(2):
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0,
                                  extra_body={"ignore_eos": True})
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    after = scrape(fresh)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("llmaas_generation_tokens_total") == 10
    # 20 prompt tokens, then 20 - 16 cached on the second request.
    assert delta("llmaas_prompt_tokens_total") == 24
    assert delta("llmaas_prefix_cache_queries_total") == 40 and delta("llmaas_prefix_cache_hits_total") == 16
    assert 0 < after[("llmaas_prefix_cache_hit_rate", ())] <= 1
    assert delta("llmaas_engine_steps_total") == 10 == delta("llmaas_step_duration_seconds_count")
    assert delta("llmaas_step_tokens_sum") == 24 + 8  # prompts plus 4 decode tokens each
    assert delta("llmaas_batch_size_count") == 10 and delta("llmaas_num_preemptions_total") == 0
    assert delta("llmaas_sequences_finished_total", finished_reason="length") == 2
    assert after[("llmaas_num_requests_running", ())] == 0 == after[("llmaas_num_requests_waiting", ())]
    assert after[("llmaas_kv_cache_usage_ratio", ())] == 0
    assert delta("llmaas_time_to_first_token_seconds_count") == 2 == delta("llmaas_e2e_request_latency_seconds_count")
    assert delta("llmaas_inter_token_latency_seconds_count") == 8
    assert delta("llmaas_e2e_request_latency_seconds_sum") > delta("llmaas_time_to_first_token_seconds_sum") > 0
    assert delta("llmaas_request_success_total", finished_reason="length") == 2
    assert delta("llmaas_http_requests_total", path="/v1/completions", status="200") == 2
    assert delta("llmaas_http_requests_total", path="/v1/completions", status="404") == 1


# -- /v1/completions: several prompts, streamed ------------------------------------------------------

def test_several_prompts_streamed_with_openai_indexing(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "prompt": ["The capital of France is", "One, two,"], "n": 2, "max_tokens": 3,
              "temperature": 0}
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason is not None:
                assert choice.index not in finished
                finished[choice.index] = choice.finish_reason
    assert sorted(texts) == sorted(finished) == [0, 1, 2, 3]
    # Choice j of prompt i is index i * n + j, as in the whole answer.
    assert [texts[c.index] for c in whole.choices] == [c.text for c in whole.choices]
    assert texts[0] != texts[2]  # different prompts, not the same stream twice
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


# -- exact usage: the ledger row holds the engine's counts, streams cut short included ---------------
