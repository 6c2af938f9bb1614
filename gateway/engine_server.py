"""The engine server: one in-process AsyncLLMEngine behind the OpenAI-compatible API, plus the load
report gateways route by (GET /internal/load)."""

from __future__ import annotations

import functools

import msgspec

from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from gateway.fleet.host import LoadReport
from gateway.http import Request, Response, Router
from gateway.metrics import ServingMetrics
from gateway.openai import ServingContext, add_openai_routes

_ENCODER = msgspec.json.Encoder()
# Output tokens counted for a request that set no max_tokens (the gateway assumes the same).
_DEFAULT_OUTPUT_TOKENS = 512


def load_engine(model: str, config: EngineConfig) -> AsyncLLMEngine:
    """Loads the model on the engine's own step-loop thread (see AsyncLLMEngine)."""
    return AsyncLLMEngine(lambda: LLMEngine(model, config))


def build_router(engine: AsyncLLMEngine, model_names: list[str] | None = None,
                 metrics: ServingMetrics | None = None) -> Router:
    """Routes for `engine`, served under `model_names` (default: the name it was loaded by),
    counted in `metrics` (default: a registry of their own)."""
    router = Router()
    ctx = ServingContext(engine, model_names or [engine.engine.model_name], metrics=metrics)
    add_openai_routes(router, ctx)
    router.add("GET", "/internal/load", functools.partial(load_report, engine))
    router.add("POST", "/internal/abort/{tag}", functools.partial(abort_tagged, ctx))
    return router


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
        max_output = seq.params.max_tokens or _DEFAULT_OUTPUT_TOKENS
        total += max(seq.num_prompt_tokens - seq.num_computed_tokens, 0) + max(max_output - seq.num_output_tokens, 0)
    return total


async def load_report(engine: AsyncLLMEngine, request: Request) -> Response:
    load = engine.load()
    report = LoadReport(num_running=load.num_running, num_waiting=load.num_waiting,
                        kv_cache_usage=load.kv_cache_usage, num_free_blocks=load.num_free_blocks,
                        num_blocks=load.num_blocks, block_size=engine.engine.runner.block_size,
                        num_pending_tokens=pending_tokens(engine.engine))
    return Response(body=_ENCODER.encode(report))
