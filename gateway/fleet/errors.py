"""Refusals of the gateway's request path, as OpenAI-style error responses."""

from __future__ import annotations

import math

import msgspec

from gateway.http import Response

_ENCODER = msgspec.json.Encoder()


class GatewayError(Exception):
    """A request the gateway refuses or cannot serve; stages raise it to stop a request."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error", headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_
        self.headers = headers or []

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return Response(status=self.status, body=_ENCODER.encode(self.body()), headers=list(self.headers))


def unavailable(message: str, retry_after_s: int) -> GatewayError:
    """No engine could serve: try again once a health probe may have brought a host back."""
    return GatewayError(503, message, code="engine_unavailable", type_="server_error",
                        headers=[("retry-after", str(retry_after_s))])


def retry_after_s(health_interval_s: float) -> int:
    """Whole seconds until the next health probe: when a host taken out may be back."""
    return max(1, math.ceil(health_interval_s))
