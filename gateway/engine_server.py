"""The engine server: one in-process AsyncLLMEngine behind the OpenAI-compatible API, plus the load
report gateways route by (GET /internal/load)."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable

import msgspec

from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from gateway.fleet.host import LoadReport
from gateway.http import Request, Response, Router, StreamingResponse, error_response
from gateway.http.app import Handler
from gateway.metrics import ServingMetrics
from gateway.openai import ServingContext, add_openai_routes

_ENCODER = msgspec.json.Encoder()
# Output tokens counted for a request that set no max_tokens (the gateway assumes the same).
_DEFAULT_OUTPUT_TOKENS = 512


def load_engine(model: str, config: EngineConfig) -> AsyncLLMEngine:
    """Loads the model on the engine's own step-loop thread (see AsyncLLMEngine)."""
    return AsyncLLMEngine(lambda: LLMEngine(model, config))


def build_router(engine: AsyncLLMEngine, model_names: list[str] | None = None,
                 metrics: ServingMetrics | None = None, api_key: str | None = None) -> Router:
    """Routes for `engine`, served under `model_names` (default: the name it was loaded by),
    counted in `metrics` (default: a registry of their own). With `api_key`, the /v1 and /internal
    routes answer only requests that carry it as a bearer token (as vLLM's --api-key: /health,
    /metrics and /openapi.json stay open)."""
    router = Router()
    guard = keyed(api_key)
    ctx = ServingContext(engine, model_names or [engine.engine.model_name], metrics=metrics)
    add_openai_routes(router, ctx, guard)
    router.add("GET", "/internal/load", guard(functools.partial(load_report, engine)))
    router.add("POST", "/internal/abort/{tag}", guard(functools.partial(abort_tagged, ctx)))
    return router


def keyed(api_key: str | None) -> Callable[[Handler], Handler]:
    """Wraps a handler so that it answers only requests bearing `api_key` (none: the handler as is)."""
    if not api_key:
        return lambda handler: handler
    expected = hashlib.sha256(api_key.encode()).digest()

    def guard(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response | StreamingResponse:
            header = request.headers.get("authorization", "")
            presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
            # Digests of equal length, compared in constant time: the key's length does not show.
            if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), expected):
                return error_response(401, "A valid API key is required: send it as `Authorization: Bearer KEY`.",
                                      "invalid_api_key")
            return await handler(request)

        return guarded

    return guard


async def abort_tagged(ctx: ServingContext, request: Request) -> Response:
    """Stops the whole answer a gateway tagged (its client left); the answer then goes out at once,
    with the usage of what was generated, for the gateway to bill."""
    return Response(body=_ENCODER.encode({"aborted": ctx.abort_tagged(request.path_params["tag"])}))


def pending_tokens(engine: LLMEngine) -> int:
    """Work the engine holds, in tokens: prompt tokens still to compute plus output tokens still
    allowed, over running and waiting sequences. Read from the HTTP thread while the step thread
    runs: list copies are atomic, and a report a step stale is fine for routing."""
    total = 0
    scheduler = engine.scheduler
    for seq in list(scheduler.running) + list(scheduler.waiting):
        max_output = 0 if engine.pooling is not None else seq.params.max_tokens or _DEFAULT_OUTPUT_TOKENS
        total += max(seq.num_prompt_tokens - seq.num_computed_tokens, 0) + max(max_output - seq.num_output_tokens, 0)
    return total


async def load_report(engine: AsyncLLMEngine, request: Request) -> Response:
    load = engine.load()
    report = LoadReport(num_running=load.num_running, num_waiting=load.num_waiting,
                        kv_cache_usage=load.kv_cache_usage, num_free_blocks=load.num_free_blocks,
                        num_blocks=load.num_blocks, block_size=engine.engine.runner.block_size,
                        num_pending_tokens=pending_tokens(engine.engine))
    return Response(body=_ENCODER.encode(report))
