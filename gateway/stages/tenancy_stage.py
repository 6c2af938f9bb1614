"""Authentication, permissions, model lifecycle and limits at admission; usage, cost and audit at
the end. A thin adapter: the rules live in gateway.tenancy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from concurrent.futures import Future

import msgspec

from gateway.fleet.errors import GatewayError
from gateway.fleet.exchange import Exchange
from gateway.http.app import Request
from gateway.openai.protocol import default_max_tokens
from gateway.tenancy import Admission, Counts, Principal, Tenancy, TenancyError

STATE_KEY = "tenancy"


def gateway_error(exc: TenancyError) -> GatewayError:
    return GatewayError(exc.status, exc.message, code=exc.code, param=exc.param, type_=exc.type,
                        headers=list(exc.headers))


class TenancyStage:
    def __init__(self, tenancy: Tenancy, require_auth: bool = True) -> None:
        self.tenancy = tenancy
        self.require_auth = require_auth

    def principal(self, authorization: str | None, request_id: str = "", client: str | None = None) -> Principal:
        """The caller (401 without a valid token, unless auth is off). Its rotation_headers go on
        the answer: they may carry the token's new secret."""
        if not self.require_auth:
            return self.tenancy.local_principal()
        try:
            return self.tenancy.authenticate(authorization, request_id=request_id, client=client)
        except TenancyError as exc:
            raise gateway_error(exc) from None

    def refuse_unread(self, request: Request, error: GatewayError) -> GatewayError:
        """The answer to a request whose body could not be read: the caller is checked first, as
        OpenAI does (a bad key is a 401 whatever the body), and a known one's refusal is audited and
        carries its x-ratelimit-* headers."""
        client = request.client[0] if request.client else None
        request_id = request.headers.get("x-request-id") or ""
        try:
            principal = self.principal(request.headers.get("authorization"), request_id, client)
        except GatewayError as refused:
            return refused
        error.headers = [*error.headers, *principal.rotation_headers,
                         *self.tenancy.refuse_unread(principal, error.status, request_id=request_id, client=client)]
        return error

    async def admit(self, exchange: Exchange) -> None:
        request = exchange.request
        client = request.client[0] if request.client else None
        principal = self.principal(request.headers.get("authorization"), exchange.request_id, client)
        state = exchange.state
        state["principal"] = principal
        fields = exchange.fields
        # Completions without a max generate OpenAI's 16: reserved as such, no ceiling to send.
        # Embeddings generate nothing: their input alone is reserved.
        asked = 0 if exchange.embeddings else \
            fields.max_completion_tokens or fields.max_tokens or default_max_tokens(exchange.path)
        try:
            admission = self.tenancy.admit(principal, exchange.model, prompt_tokens=exchange.estimated_prompt_tokens,
                                           max_tokens=asked, n=max(fields.n or 1, 1) * exchange.num_prompts,
                                           request_id=exchange.request_id, client=client)
        except TenancyError as exc:
            raise gateway_error(exc) from None
        state[STATE_KEY] = admission
        exchange.response_headers += admission.headers()
        exchange.warning = admission.warning
        # The engine gets the tier's priority (its scheduler runs lower values first; tiers rank
        # higher values first), and the tier's ceiling when the client set no max: a ceiling, not
        # a max_tokens, which the engine would refuse where it passes the model's context.
        exchange.overrides["priority"] = -admission.priority
        if asked is None:
            exchange.overrides["max_tokens_cap"] = admission.max_tokens

    def finish(self, exchange: Exchange) -> Awaitable[None] | None:
        state = exchange.state
        admission: Admission | None = state.get(STATE_KEY)
        if admission is None:
            return None
        verdict, rules_version = state.get("verdict"), state.get("security_rules_version")
        prompt = prompt_text(exchange) if self.tenancy.audit.keeps_prompts else None
        if state.get("blocked"):
            return _awaitable(self.tenancy.refuse(admission, status=exchange.status, reason="security",
                                                  verdict=verdict, rules_version=rules_version, prompt=prompt))
        usage = exchange.usage
        if usage is not None:
            counts = Counts(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.reasoning_tokens)
        else:  # cut short before the engine's usage: what reached the client, prompt estimated
            # An engine's refusal of the request (a 4xx answer; 499 is a client that left) computed
            # nothing; a server error or a stream cut short may have computed the prompt.
            computed = exchange.first_byte and not (400 <= exchange.status < 500 and exchange.status != 499)
            counts = Counts(exchange.estimated_prompt_tokens if computed else 0, 0, exchange.streamed_tokens, 0)
        reason = "aborted" if exchange.status == 499 else None
        written = self.tenancy.finish(admission, counts, exchange.status, verdict=verdict,
                                      rules_version=rules_version, reason=reason, prompt=prompt)
        state["cost_eur"] = admission.cost_eur  # for the metrics stage, which ends after
        return _awaitable(written)


def prompt_text(exchange: Exchange) -> str:
    """What the caller sent the model, as JSON: a chat's messages, a completion's prompt, an
    embeddings request's input."""
    return msgspec.json.encode(exchange.payload().get(exchange.prompt_field)).decode()


def _awaitable(future: Future[None]) -> Awaitable[None] | None:
    """None when the row is durable already (journaled: the usual case), so the request path does
    not pay asyncio.wrap_future's thread-safe wake-up of the loop (a self-pipe write) per request."""
    if future.done():
        future.result()  # a failed journal write fails the request, as a failed commit did
        return None
    return asyncio.wrap_future(future)
