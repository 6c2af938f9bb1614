"""What a check returns, the per-tenant policy it obeys, and the public error for a block."""

from __future__ import annotations

from typing import Literal

import msgspec

Action = Literal["allow", "flag", "block"]
Mode = Literal["on", "flag_only", "off"]
LAYERS = ("structure", "patterns", "behaviour")

# A verdict blocks at this score from layers that are "on", flags at FLAG_AT from any layer.
BLOCK_AT = 1.0
FLAG_AT = 0.5

# Stable public error: the code clients can branch on and a message that names no rule, score or
# layer an attacker could tune against.
BLOCK_CODE = "prompt_injection_detected"
BLOCK_MESSAGE = "The request was rejected by the prompt security policy."


class Match(msgspec.Struct, frozen=True):
    rule: str
    message: int  # index in the request's messages
    start: int  # span in that message's text (in the content part when part >= 0)
    end: int
    part: int = -1


class Verdict(msgspec.Struct, frozen=True):
    action: Action
    score: float
    rules: tuple[str, ...] = ()
    matches: tuple[Match, ...] = ()

    @property
    def blocked(self) -> bool:
        return self.action == "block"


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-tenant mode of each layer; set by operators (admin API, config), never by a request."""

    structure: Mode = "on"
    patterns: Mode = "on"
    behaviour: Mode = "on"

    def __post_init__(self) -> None:
        for layer in LAYERS:
            if getattr(self, layer) not in ("on", "flag_only", "off"):
                raise ValueError(f"policy {layer}: expected on, flag_only or off")

    def mode(self, layer: str) -> Mode:
        return getattr(self, layer)


DEFAULT_POLICY = Policy()


def error_body() -> dict[str, object]:
    """OpenAI-style body of the 400 answered for a blocked prompt."""
    return {"error": {"message": BLOCK_MESSAGE, "type": "invalid_request_error", "param": None,
                      "code": BLOCK_CODE}}
