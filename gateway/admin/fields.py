"""The admin API's refusals of one field: a 400 whose `param` names it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import msgspec

T = TypeVar("T")


class FieldError(ValueError):
    """A bad value in one field of a request: a 400 naming it as `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def field(param: str, check: Callable[..., object], *args: object) -> object:
    """check(*args), with its ValueError charged to `param`."""
    try:
        return check(*args)
    except ValueError as exc:
        raise FieldError(param, str(exc)) from None


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise FieldError(key, f"Invalid body: the field `{key}` is given twice")
        seen.add(key)
    return dict(pairs)


def decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """The body as `decoder`'s type, a field given twice refused: msgspec keeps the last one, so
    `{"patterns": "off", "patterns": "on"}` would be set to whichever a reader of it did not expect."""
    value = decoder.decode(body)  # msgspec's refusals first: they name the field at fault
    json.loads(body, object_pairs_hook=_unique)  # a small body, read twice only once it is valid
    return value
