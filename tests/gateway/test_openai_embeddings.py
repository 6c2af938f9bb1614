"""POST /v1/embeddings on the engine server, with the real built-in model started as an embedding
engine (`--task embed`): float and base64 answers agree, list inputs come back in order, usage
counts the prompt tokens, bad requests get OpenAI-style 400s, and each engine refuses the other
task's routes."""
from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch

from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from gateway.engine_server import build_router, load_engine

from tests.gateway.serve_stack import CAPITAL, MODEL, Running, all_blocks_free, raw_post

HIDDEN = 576  # SmolLM2-135M's hidden size
TEXTS = ["The capital of France is Paris.", "Bonjour", "One, two, three, four"]


@pytest.fixture(scope="module")
def embedder(running: Running) -> Iterator[tuple[Running, AsyncLLMEngine]]:
    """An embedding engine's server (on the package's loop); a 16 MiB cache holds 1456 tokens."""
    engine = load_engine(MODEL, EngineConfig(dtype=torch.float32, kv_cache_bytes=16 * 1024 * 1024, task="embed"))
    try:
        yield running.start(build_router(engine)), engine
    finally:
        engine.shutdown()


def post(server: Running, path: str, body: dict) -> tuple[int, dict]:
    status, answer = raw_post(server, path, json.dumps(body).encode())
    return status, json.loads(answer)


def embed(server: Running, given: object, **extra: object) -> dict:
    status, answer = post(server, "/v1/embeddings", {"model": MODEL, "input": given, **extra})
    assert status == 200, answer
    return answer


def test_float_and_base64_answers_agree(embedder) -> None:
    server, engine = embedder
    answer = embed(server, TEXTS[0])
    assert (answer["object"], answer["model"], len(answer["data"])) == ("list", MODEL, 1)
    item = answer["data"][0]
    assert (item["object"], item["index"]) == ("embedding", 0)
    vector = torch.tensor(item["embedding"])
    assert vector.shape == (HIDDEN,) and abs(vector.norm().item() - 1.0) < 1e-5
    tokens = len(engine.tokenizer.encode(TEXTS[0]))
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    packed = embed(server, TEXTS[0], encoding_format="base64", dimensions=HIDDEN)["data"][0]["embedding"]
    raw = base64.b64decode(packed)
    assert len(raw) == 4 * HIDDEN
    assert list(struct.unpack(f"<{HIDDEN}f", raw)) == item["embedding"]  # float32 values, exactly
    assert embed(server, TEXTS[0], encoding_format=None, dimensions=None)["data"][0]["embedding"] == item["embedding"]
    assert all_blocks_free(engine)


def test_list_inputs_come_back_in_order(embedder) -> None:
    server, engine = embedder
    alone = [torch.tensor(embed(server, text)["data"][0]["embedding"]) for text in TEXTS]
    answer = embed(server, TEXTS)
    assert [item["index"] for item in answer["data"]] == [0, 1, 2]
    for item, want in zip(answer["data"], alone):
        torch.testing.assert_close(torch.tensor(item["embedding"]), want, atol=1e-5, rtol=1e-5)
    ids = [engine.tokenizer.encode(text) for text in TEXTS]
    assert answer["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    by_ids = embed(server, ids)
    for item, want in zip(by_ids["data"], alone):
        torch.testing.assert_close(torch.tensor(item["embedding"]), want, atol=1e-5, rtol=1e-5)
    one = embed(server, ids[1])
    assert len(one["data"]) == 1 and one["usage"]["prompt_tokens"] == len(ids[1])
    torch.testing.assert_close(torch.tensor(one["data"][0]["embedding"]), alone[1], atol=1e-5, rtol=1e-5)
    assert all_blocks_free(engine)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": MODEL}, "input"),
    ({"model": MODEL, "input": []}, "input"),
    ({"model": MODEL, "input": ""}, "input"),
    ({"model": MODEL, "input": ["Bonjour", ""]}, "input"),
    ({"model": MODEL, "input": [[1, 2], []]}, "input"),
    ({"model": MODEL, "input": ["x"] * 2049}, "input"),
    ({"model": MODEL, "input": [1, 10**7]}, "input"),
    ({"model": MODEL, "input": [[5], [-1]]}, "input"),
    ({"model": MODEL, "input": 5}, "input"),
    ({"model": MODEL, "input": ["a", 1]}, "input"),
    ({"model": MODEL, "input": list(range(1, 1500))}, "input"),  # longer than the context
    ({"model": MODEL, "input": "a", "encoding_format": "hex"}, "encoding_format"),
    ({"model": MODEL, "input": "a", "dimensions": 64}, "dimensions"),  # not known to be Matryoshka-trained
    ({"model": MODEL, "input": "a", "dimensions": 0}, "dimensions"),
    ({"model": MODEL, "input": "a", "dimensions": HIDDEN + 1}, "dimensions"),
])
def test_bad_requests_get_openai_style_400s(embedder, body: dict, param: str) -> None:
    server, engine = embedder
    status, answer = post(server, "/v1/embeddings", body)
    assert status == 400, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    # Inputs already started when a later one was refused are aborted (asynchronously).
    deadline = time.monotonic() + 10
    while not all_blocks_free(engine) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all_blocks_free(engine)


def test_unknown_model_is_a_404(embedder) -> None:
    status, answer = post(embedder[0], "/v1/embeddings", {"model": "nope", "input": "a"})
    assert status == 404 and answer["error"]["code"] == "model_not_found"


def test_each_engine_refuses_the_other_tasks_routes(embedder, running: Running) -> None:
    server, _ = embedder
    for path, body in [("/v1/chat/completions", {"messages": CAPITAL}), ("/v1/completions", {"prompt": "Hi"})]:
        status, answer = post(server, path, {"model": MODEL, "max_tokens": 2, **body})
        assert status == 400 and "embeddings only" in answer["error"]["message"], answer
        assert answer["error"]["param"] == "model"
    generator = running.start(build_router(running.engine))
    status, answer = post(generator, "/v1/embeddings", {"model": MODEL, "input": "a"})
    assert status == 400 and "--task embed" in answer["error"]["message"] and answer["error"]["param"] == "model"


@pytest.mark.parametrize("flag", [["--pooling", "mean"], ["--matryoshka"]])
def test_cli_takes_embedding_flags_only_with_the_embed_task(flag: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "engine", "--model", MODEL, "--port", "1", *flag],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--task embed" in done.stderr and "Traceback" not in done.stderr


def test_a_matryoshka_engine_shortens_its_embeddings(running: Running, embedder) -> None:
    """--matryoshka: `dimensions` below the model's size gives the full vector's first values, normalised
    again, in float and base64 alike."""
    full = torch.tensor(embed(embedder[0], TEXTS[0])["data"][0]["embedding"])
    engine = load_engine(MODEL, EngineConfig(dtype=torch.float32, kv_cache_bytes=16 * 1024 * 1024, task="embed",
                                             matryoshka=True))
    try:
        server = running.start(build_router(engine))
        short = torch.tensor(embed(server, TEXTS[0], dimensions=64)["data"][0]["embedding"])
        packed = embed(server, TEXTS[0], dimensions=64, encoding_format="base64")["data"][0]["embedding"]
        assert embed(server, TEXTS[0], dimensions=HIDDEN)["data"][0]["embedding"] == full.tolist()
    finally:
        engine.shutdown()
    assert short.shape == (64,) and abs(short.norm().item() - 1.0) < 1e-5
    torch.testing.assert_close(short, full[:64] / full[:64].norm(), atol=1e-6, rtol=0)
    assert list(struct.unpack("<64f", base64.b64decode(packed))) == pytest.approx(short.tolist(), abs=1e-7)
