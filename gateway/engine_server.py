"""The engine server: one in-process AsyncLLMEngine behind the OpenAI-compatible API."""

from __future__ import annotations

from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from gateway.http import Router
from gateway.openai import ServingContext, add_openai_routes


def load_engine(model: str, config: EngineConfig) -> AsyncLLMEngine:
    """Loads the model on the engine's own step-loop thread (see AsyncLLMEngine)."""
    return AsyncLLMEngine(lambda: LLMEngine(model, config))


def build_router(engine: AsyncLLMEngine, model_names: list[str] | None = None) -> Router:
    """Routes for `engine`, served under `model_names` (default: the name it was loaded by)."""
    router = Router()
    add_openai_routes(router, ServingContext(engine, model_names or [engine.engine.model_name]))
    return router
