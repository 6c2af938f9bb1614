"""Routes of the OpenAI-compatible API, plus /health."""

from __future__ import annotations

import functools

from gateway.http import Request, Response, Router
from gateway.openai.chat import create_chat_completion
from gateway.openai.completions import create_completion
from gateway.openai.protocol import ModelCard, ModelList
from gateway.openai.serving import ApiError, ServingContext, json_response


def add_openai_routes(router: Router, ctx: ServingContext) -> None:
    router.add("POST", "/v1/chat/completions", functools.partial(create_chat_completion, ctx))
    router.add("POST", "/v1/completions", functools.partial(create_completion, ctx))
    router.add("GET", "/v1/models", functools.partial(list_models, ctx))
    router.add("GET", "/v1/models/{model}", functools.partial(get_model, ctx))
    router.add("GET", "/health", health)


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
    return Response(body=b'{"status":"ok"}')
