"""Typed errors the engine raises for a caller's mistakes; the HTTP layer maps them to status codes."""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine reports to its caller."""


class InvalidRequestError(EngineError, ValueError):
    """A request the engine can never serve as given (HTTP 400). `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLongError(InvalidRequestError):
    """The prompt, or prompt plus max_tokens, does not fit the context window or the KV cache."""


class EngineDeadError(EngineError):
    """The engine's step loop stopped on an internal error; no request can proceed."""
