"""The OpenAI-compatible API: wire types (protocol), shared helpers (serving), and route handlers."""

from __future__ import annotations

from gateway.openai.handlers import add_openai_routes
from gateway.openai.serving import ServingContext

__all__ = ["ServingContext", "add_openai_routes"]
