"""The OpenAI-compatible API: wire types (protocol), shared helpers (serving), and route handlers.

The handlers need the engine (and torch); the wire types and the OpenAPI document do not. Exports
are resolved on first use so that a gateway in front of remote engines, which imports only the
latter, never loads torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.openai.handlers import add_openai_routes
    from gateway.openai.serving import ServingContext

__all__ = ["ServingContext", "add_openai_routes"]


def __getattr__(name: str) -> Any:
    if name == "add_openai_routes":
        from gateway.openai.handlers import add_openai_routes

        return add_openai_routes
    if name == "ServingContext":
        from gateway.openai.serving import ServingContext

        return ServingContext
    raise AttributeError(name)
