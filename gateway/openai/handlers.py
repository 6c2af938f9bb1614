"""Routes of the OpenAI-compatible API, plus /health, /metrics and /openapi.json."""

from __future__ import annotations

import functools
from collections.abc import Callable

from gateway.http import Request, Response, Router, StreamingResponse
from gateway.http.app import Handler
from gateway.metrics import ServingMetrics, metrics_endpoint
from gateway.openai.chat import create_chat_completion
from gateway.openai.completions import create_completion
from gateway.openai.embeddings import create_embedding
from gateway.openai.openapi import openapi_endpoint
from gateway.openai.protocol import Health, ModelCard, ModelList
from gateway.openai.serving import ApiError, ServingContext, json_response


def add_openai_routes(router: Router, ctx: ServingContext,
                      guard: Callable[[Handler], Handler] = lambda handler: handler) -> None:
    """Every route of the engine server; /openapi.json documents exactly these (see tests).
    `guard` wraps the /v1 routes (the engine's API key)."""
    metrics = ctx.metrics
    assert metrics is not None, "ServingContext makes one"

    def add(method: str, path: str, handler: Handler) -> None:
        router.add(method, path, _counted(metrics, path, guard(handler)))

    add("POST", "/v1/chat/completions", functools.partial(create_chat_completion, ctx))
    add("POST", "/v1/completions", functools.partial(create_completion, ctx))
    add("POST", "/v1/embeddings", functools.partial(create_embedding, ctx))
    add("GET", "/v1/models", functools.partial(list_models, ctx))
    add("GET", "/v1/models/{model}", functools.partial(get_model, ctx))
    router.add("GET", "/health", health)
    router.add("GET", "/metrics", functools.partial(metrics_endpoint, metrics))
    router.add("GET", "/openapi.json", openapi_endpoint(router))


def _counted(metrics: ServingMetrics, path: str, handler: Handler) -> Handler:
    """Counts answers by route (the template, to bound label values) and status."""

    async def counted(request: Request) -> Response | StreamingResponse:
        response = await handler(request)
        metrics.requests.labels(path, str(response.status)).inc()
        return response

    return counted


async def list_models(ctx: ServingContext, request: Request) -> Response:
    return json_response(ModelList(data=[ModelCard(id=name, created=ctx.created) for name in ctx.model_names]))


async def get_model(ctx: ServingContext, request: Request) -> Response:
    name = request.path_params["model"]
    try:
        ctx.check_model(name)
    except ApiError as exc:
        return exc.response()
    return json_response(ModelCard(id=name, created=ctx.created))


async def health(request: Request) -> Response:
    return json_response(Health(status="ok"))
