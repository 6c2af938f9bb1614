"""GET /openapi.json: documents every served route; request bodies validate as the server decodes them."""
from __future__ import annotations

import asyncio
import json
import urllib.request
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from engine.stats import EngineStats
from gateway.http import Router, serve
from gateway.openai import ServingContext, add_openai_routes
from gateway.engine_server import build_router
from gateway.openai.openapi import OPERATIONS, openapi_document
from gateway.openai.protocol import ChatCompletionRequest, CompletionRequest


def engine_router() -> Router:
    """The engine server's routes over a stand-in engine: route registration never touches the model."""
    engine: Any = SimpleNamespace(tokenizer=None, engine=SimpleNamespace(stats_snapshot=EngineStats))
    router = Router()
    add_openai_routes(router, ServingContext(engine, ["m"], reasoning_markers=None))
    return router


def served_engine_router() -> Router:
    """The engine server's real router (gateway.engine_server), which adds routes of its own."""
    engine: Any = SimpleNamespace(tokenizer=SimpleNamespace(chat_template=None, encode=lambda *a, **k: [1, 2]),
                                  engine=SimpleNamespace(stats_snapshot=EngineStats))
    return build_router(engine, ["m"])


def validate(schema: dict[str, Any], value: Any, components: dict[str, Any]) -> bool:
    """JSON Schema validation for the keywords msgspec emits (enough for these documents)."""
    if "$ref" in schema:
        return validate(components[schema["$ref"].rsplit("/", 1)[1]], value, components)
    if "anyOf" in schema:
        return any(validate(option, value, components) for option in schema["anyOf"])
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "null": lambda v: v is None,
        None: lambda v: True,
    }
    if not checks[kind](value):
        return False
    if kind == "object":
        if any(name not in value for name in schema.get("required", ())):
            return False
        properties = schema.get("properties", {})
        return all(validate(properties[k], v, components) for k, v in value.items() if k in properties)
    if kind == "array" and "items" in schema:
        return all(validate(schema["items"], item, components) for item in value)
    return True


def test_every_served_route_is_documented_and_nothing_else() -> None:
    for router in (engine_router(), served_engine_router()):
        document = openapi_document(router.routes())
        assert document["openapi"].startswith("3.1")
        served = {(method.lower(), path) for method, path in router.routes()}
        documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
        assert served == documented
    # Every route the OpenAI layer serves has a full description.
    assert {(op.method, op.path) for op in OPERATIONS} == set(engine_router().routes())
    params = document["paths"]["/v1/models/{model}"]["get"]["parameters"]
    assert params[0]["name"] == "model" and params[0]["in"] == "path"


def test_every_reference_resolves() -> None:
    document = openapi_document()
    components = document["components"]["schemas"]
    refs = [m for m in _walk(document) if isinstance(m, dict) and "$ref" in m]
    assert refs and all(ref["$ref"].rsplit("/", 1)[1] in components for ref in refs)
    assert {"ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk", "ErrorBody"} <= set(components)


CHAT_BODIES = [
    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    {"model": "m", "messages": [], "max_tokens": 5, "stop": ["a", "b"], "stream": True,
     "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 2, "seed": 1, "top_k": 3},
    {"model": "m", "messages": [], "max_tokens": "many"},
    {"model": 5, "messages": []},
    {"messages": []},
    {"model": "m", "messages": [], "stop": [1]},
    {"model": "m", "messages": [], "stream_options": {"include_usage": "yes"}},
]
COMPLETION_BODIES = [
    {"model": "m", "prompt": "hello"},
    {"model": "m", "prompt": ["a", "b"], "n": 2, "logprobs": 1, "temperature": 0.5},
    {"model": "m", "prompt": [1, 2, 3]},
    {"model": "m", "prompt": [[1, 2], [3]]},
    {"model": "m", "prompt": {"text": "x"}},
    {"model": "m"},
    {"model": "m", "prompt": "x", "logprobs": True},
]


@pytest.mark.parametrize(("path", "struct", "body"),
                         [("/v1/chat/completions", ChatCompletionRequest, b) for b in CHAT_BODIES]
                         + [("/v1/completions", CompletionRequest, b) for b in COMPLETION_BODIES])
def test_request_bodies_validate_exactly_when_the_server_accepts_them(path: str, struct: type,
                                                                      body: dict[str, Any]) -> None:
    document = openapi_document()
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    try:
        msgspec.json.decode(json.dumps(body), type=struct)
        accepted = True
    except msgspec.ValidationError:
        accepted = False
    assert validate(schema, body, document["components"]["schemas"]) == accepted


def test_served_document_is_the_generated_one() -> None:
    router = served_engine_router()

    async def main() -> bytes:
        server = await serve(router, "127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{server.port}/openapi.json"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        finally:
            await server.shutdown(1.0)

    served = json.loads(asyncio.run(main()))
    assert served == json.loads(json.dumps(openapi_document(router.routes())))
    assert "/v1/chat/completions" in served["paths"] and "/metrics" in served["paths"]


def test_internal_request_fields_are_not_advertised() -> None:
    # The gateway sets priority and max_tokens_cap for the engine; a client has no business sending them.
    schemas = openapi_document()["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        assert not {"priority", "max_tokens_cap"} & set(schemas[name]["properties"])
        assert {"model", "n", "max_tokens"} <= set(schemas[name]["properties"])


def test_bodies_no_struct_describes_are_documented_as_served() -> None:
    router = served_engine_router()

    async def main() -> dict[str, tuple[str, bytes]]:
        server = await serve(router, "127.0.0.1", 0)
        try:
            def get(path: str) -> tuple[str, bytes]:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
                    return response.headers["content-type"], response.read()
            return {path: await asyncio.to_thread(get, path) for path in ("/metrics", "/openapi.json", "/health")}
        finally:
            await server.shutdown(1.0)

    served = asyncio.run(main())
    document = openapi_document(router.routes())
    components = document["components"]["schemas"]
    for path, (content_type, body) in served.items():
        [(media, described)] = document["paths"][path]["get"]["responses"]["200"]["content"].items()
        assert media == content_type
        value = json.loads(body) if media == "application/json" else body.decode()
        assert validate(described["schema"], value, components), path


def _walk(node: Any) -> list[Any]:
    out = [node]
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        out.extend(_walk(child))
    return out
