"""The admin API's refusals of one field: a 400 whose `param` names it."""

from __future__ import annotations

from collections.abc import Callable


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
