"""GET /openapi.json: an OpenAPI 3.1 document generated from the msgspec Structs the handlers use.

The schemas come from msgspec.json.schema_components over the very types the decoders and encoders
use, so the document cannot drift from the wire format. The paths are the router's own, read when
the document is first asked for (after every route is registered): a route the table below does
not describe (one added by another layer) is still listed, with a bare response.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.http import Request, Response, Router
from gateway.openai.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ErrorBody,
    Health,
    ModelCard,
    ModelList,
    SamplingFields,
)

_REF = "#/components/schemas/{name}"


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    summary: str
    request: type[SamplingFields | EmbeddingRequest] | None = None
    response: type | None = None  # a JSON body
    stream_event: type | None = None  # the event type when the body may be server-sent events
    other_body: tuple[str, dict[str, Any]] | None = None  # a body no Struct describes: media type, schema
    also: tuple[str, str] | None = None  # another status answered with the same body, and when


OPERATIONS = (
    Operation("POST", "/v1/chat/completions", "Create a chat completion", ChatCompletionRequest, ChatCompletion,
              ChatCompletionChunk),
    Operation("POST", "/v1/completions", "Create a completion", CompletionRequest, Completion, Completion),
    Operation("POST", "/v1/embeddings", "Create embeddings", EmbeddingRequest, EmbeddingList),
    Operation("GET", "/v1/models", "List models", response=ModelList),
    Operation("GET", "/v1/models/{model}", "Retrieve a model", response=ModelCard),
    Operation("GET", "/health", "Liveness", response=Health, also=("503", "Some model has no healthy host")),
    # The exposition format prometheus_client writes, the very header both servers send.
    Operation("GET", "/metrics", "Prometheus metrics", other_body=(CONTENT_TYPE_LATEST, {"type": "string"})),
    Operation("GET", "/openapi.json", "This document",
              other_body=("application/json", {"type": "object", "description": "An OpenAPI 3.1 document"})),
)


def openapi_document(routes: list[tuple[str, str]] | None = None, title: str = "llmaas",
                     version: str = "0.1.0") -> dict[str, Any]:
    """The document for `routes` ((method, path) pairs; default: every described operation)."""
    described = {(op.method, op.path): op for op in OPERATIONS}
    served = routes if routes is not None else list(described)
    operations = [described.get((m.upper(), p)) or Operation(m.upper(), p, f"{m.upper()} {p}") for m, p in served]
    types: list[Any] = [ErrorBody]
    for op in operations:
        types.extend(t for t in (op.request, op.response, op.stream_event) if t is not None)
    types = list(dict.fromkeys(types))
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    for request in {op.request for op in operations if op.request is not None}:
        _leave_out(components[request.__name__], request.INTERNAL)
    ref_of = dict(zip(types, refs))
    error = {"description": "An OpenAI-style error", "content": {"application/json": {"schema": ref_of[ErrorBody]}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        content: dict[str, Any] = {}
        if op.response is not None:
            content["application/json"] = {"schema": ref_of[op.response]}
        if op.stream_event is not None:
            # Each `data:` line carries one event of this type; the stream ends with `data: [DONE]`.
            content["text/event-stream"] = {"itemSchema": ref_of[op.stream_event]}
        if op.other_body is not None:
            media, schema = op.other_body
            content[media] = {"schema": schema}
        if not content:
            content["application/json"] = {"schema": {}}
        responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
        if op.also is not None:
            responses[op.also[0]] = {"description": op.also[1], "content": content}
        entry: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op),
                                 "responses": {**responses, "default": error}}
        params = [seg[1:-1] for seg in op.path.split("/") if seg.startswith("{") and seg.endswith("}")]
        if params:
            entry["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                   for p in params]
        if op.request is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref_of[op.request]}}}
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }


def _leave_out(schema: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Drops fields a request type decodes but clients are not to send (the gateway's own)."""
    for name in fields:
        schema["properties"].pop(name, None)
    if "required" in schema:
        schema["required"] = [name for name in schema["required"] if name not in fields]


def _operation_id(op: Operation) -> str:
    words = [w.strip("{}") for w in op.path.strip("/").replace(".", "_").split("/")]
    return op.method.lower() + "_" + "_".join(words)


def openapi_endpoint(router: Router) -> Callable[[Request], Awaitable[Response]]:
    """A handler serving the document of `router`'s routes, built and encoded on first use."""
    body: list[bytes] = []

    async def handler(request: Request) -> Response:
        if not body:
            body.append(msgspec.json.encode(openapi_document(router.routes())))
        return Response(body=body[0])

    return handler
