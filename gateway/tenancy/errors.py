"""Typed refusals of the tenancy stages; the gateway maps each to an OpenAI `{"error": {...}}` body.

Each carries the HTTP status, OpenAI's error `type` and `code`, a message, the audit `reason`
(auth, permission, limit, budget, lifecycle, ...) and the headers the response must carry
(Retry-After and the x-ratelimit-* set on a 429, for instance).
"""

from __future__ import annotations


class TenancyError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None
    reason = "invalid"

    def __init__(self, message: str, headers: list[tuple[str, str]] | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: list[tuple[str, str]] = headers or []
        self.param = param

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class AuthenticationError(TenancyError):
    status, code, reason = 401, "invalid_api_key", "auth"


class PermissionDenied(TenancyError):
    status, type, code, reason = 403, "permission_error", "model_not_allowed", "permission"


class ModelNotFound(TenancyError):
    status, code, reason = 404, "model_not_found", "lifecycle"


class ModelRetired(TenancyError):
    # 410 Gone: the model existed and will not come back; the message names the replacement.
    status, code, reason = 410, "model_retired", "lifecycle"

    def __init__(self, message: str, replacement: str | None, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message, headers, param="model")
        self.replacement = replacement


class ModelUnavailable(TenancyError):
    # Listed in the catalog but served by no engine host.
    status, type, code, reason = 503, "server_error", "model_not_served", "lifecycle"


class RequestTooLarge(TenancyError):
    status, code, reason = 400, "request_too_large", "limit"


class RateLimited(TenancyError):
    status, type, code, reason = 429, "requests", "rate_limit_exceeded", "limit"

    def __init__(self, message: str, retry_after: float, headers: list[tuple[str, str]], kind: str) -> None:
        super().__init__(message, headers)
        self.retry_after = retry_after
        self.type = kind  # OpenAI says "requests" or "tokens"


class BudgetExceeded(TenancyError):
    status, type, code, reason = 429, "insufficient_quota", "insufficient_quota", "budget"
