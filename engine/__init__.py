"""llmaas inference engine: `from engine import LLM, SamplingParams`."""
from __future__ import annotations

from typing import Any

__all__ = ["LLM", "LLMEngine", "AsyncLLMEngine", "SamplingParams", "EngineConfig"]

_EXPORTS = {
    "LLM": "engine.llm",
    "LLMEngine": "engine.llm_engine",
    "AsyncLLMEngine": "engine.async_engine",
    "SamplingParams": "engine.sampling_params",
    "EngineConfig": "engine.config",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one submodule (a kernel, the tokenizer) does not load the whole engine.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
