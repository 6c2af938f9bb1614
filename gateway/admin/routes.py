"""Admin API routes, authenticated by a separate admin token (`Authorization: Bearer <admin token>`,
from LLMAAS_ADMIN_TOKEN or the caller); tenant tokens never open them.

    POST   /admin/v1/tokens               {"tenant", "tier", "models": [...], "expires_in": "90d", "name"}
    GET    /admin/v1/tokens?tenant=T
    DELETE /admin/v1/tokens/{id}          revoke (again: the token as it is, nothing changed)
    POST   /admin/v1/tokens/{id}/rotate   {"grace": "7d"}
    GET    /admin/v1/usage?tenant=T&since=2026-01-01&until=...&by=model|day|tenant&format=json|csv|table
    GET    /admin/v1/audit/verify
    GET    /admin/v1/audit/export         JSON lines; ?prompts=true: with the kept prompts' text
    POST   /admin/v1/audit/purge          drop prompt text past its retention
    GET|PUT|DELETE /admin/v1/tenants/{tenant}/security-policy, GET /admin/v1/security-policies
                                          per-tenant prompt security (security_policies.py)

A bad body is a 400 whose `param` names the field at fault. Each change (a token created, revoked
or rotated, a policy set or deleted, prompts purged) leaves an audit record beside the requests',
with the operator's address as its client.

The store calls run in a worker thread, so the event loop never waits on a commit.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Awaitable, Callable

import msgspec

from gateway.admin.fields import FieldError, decode, field
from gateway.admin.security_policies import delete_policy, get_policy, list_policies, put_policy
from gateway.cli_tokens import check_grace, check_name, iso_time, parse_duration, parse_since
from gateway.http import Request, Response, Router, error_response
from gateway.http.json_errors import invalid_json_message
from gateway.tenancy import Tenancy
from gateway.tenancy.audit import export_jsonl, verify
from gateway.tenancy.ledger import render, summarize
from gateway.tenancy.store import TokenRecord
from gateway.tenancy.tokens import check_lifetime, check_models, check_tenant

ADMIN_TOKEN_ENV = "LLMAAS_ADMIN_TOKEN"
_AT_FIELD = re.compile(r"at `\$\.(\w+)")
_NAMED_FIELD = re.compile(r"field `([^`]+)`")
_ENC = msgspec.json.Encoder()


class CreateToken(msgspec.Struct, forbid_unknown_fields=True):
    tenant: str
    tier: str
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    expires_in: str | None = None
    name: str = ""


class RotateToken(msgspec.Struct, forbid_unknown_fields=True):
    grace: str | None = None


_CREATE = msgspec.json.Decoder(CreateToken)
_ROTATE = msgspec.json.Decoder(RotateToken)
AdminHandler = Callable[[Tenancy, Request], Awaitable[Response]]


def _json(body: object, status: int = 200) -> Response:
    return Response(status=status, body=_ENC.encode(body))


def _token_view(r: TokenRecord) -> dict[str, object]:
    return {"id": r.id, "tenant": r.tenant, "tier": r.tier, "models": r.models, "name": r.name,
            "created_at": iso_time(r.created_at), "expires_at": iso_time(r.expires_at) if r.expires_at else None,
            "revoked_at": iso_time(r.revoked_at) if r.revoked_at else None, "rotated_to": r.rotated_to,
            "rotated_from": r.rotated_from}


def add_admin_routes(router: Router, tenancy: Tenancy, admin_token: str) -> None:
    if len(admin_token) < 16:
        raise ValueError("the admin token needs at least 16 characters")
    # Compare digests: same length whatever the presented value, and the token is not kept in clear.
    expected = hashlib.sha256(admin_token.encode()).digest()

    def guarded(handler: AdminHandler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def wrapper(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), expected):
                return error_response(401, "A valid admin token is required.", "invalid_admin_token")
            try:
                return await handler(tenancy, request)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
                return _invalid_body(exc, request.body)
            except FieldError as exc:
                return error_response(400, str(exc), param=exc.param)
            except ValueError as exc:  # a refusal no one field explains (rotating a revoked token)
                return error_response(400, str(exc))
            except KeyError as exc:
                return error_response(404, str(exc.args[0]), "not_found")
        return wrapper

    router.add("POST", "/admin/v1/tokens", guarded(create_token))
    router.add("GET", "/admin/v1/tokens", guarded(list_tokens))
    router.add("DELETE", "/admin/v1/tokens/{token_id}", guarded(revoke_token))
    router.add("POST", "/admin/v1/tokens/{token_id}/rotate", guarded(rotate_token))
    router.add("GET", "/admin/v1/usage", guarded(usage))
    router.add("GET", "/admin/v1/audit/verify", guarded(audit_verify))
    router.add("GET", "/admin/v1/audit/export", guarded(audit_export))
    router.add("POST", "/admin/v1/audit/purge", guarded(audit_purge))
    router.add("GET", "/admin/v1/security-policies", guarded(list_policies))
    policy_path = "/admin/v1/tenants/{tenant}/security-policy"
    router.add("GET", policy_path, guarded(get_policy))
    router.add("PUT", policy_path, guarded(functools.partial(put_policy, audited=_audited)))
    router.add("DELETE", policy_path, guarded(functools.partial(delete_policy, audited=_audited)))


def _invalid_body(exc: msgspec.ValidationError | msgspec.DecodeError | UnicodeDecodeError, body: bytes) -> Response:
    """400 with the field at fault as `param` (msgspec names it: "... - at `$.patterns`", "unknown
    field `x`", "missing required field `tier`"); None when the body as a whole is wrong."""
    message = str(exc) if isinstance(exc, msgspec.ValidationError) else invalid_json_message(body, exc)
    found = _AT_FIELD.search(message) or _NAMED_FIELD.search(message)
    body = {"error": {"message": f"Invalid body: {message}", "type": "invalid_request_error",
                      "param": found.group(1) if found else None, "code": None}}
    return _json(body, status=400)


def _query(request: Request) -> dict[str, str]:
    """The query's parameters, blank ones kept (`since=` is an error, not the default)."""
    return {k: v[-1] for k, v in urllib.parse.parse_qs(request.query_string, keep_blank_values=True).items()}


def _tenant(q: dict[str, str]) -> str | None:
    tenant = q.get("tenant")
    if tenant is not None:
        field("tenant", check_tenant, tenant)
    return tenant


def _moment(text: str) -> float:
    try:
        return parse_since(text)
    except Exception:  # argparse's error type: a user error here too
        raise ValueError(f"not a date or duration: {text!r} (an ISO date, or a duration back like 30d)") from None


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except Exception:  # argparse's error type: a user error here too
        raise ValueError(f"not a duration: {text!r} (try 90d, 12h, 30m)") from None


async def _audited(t: Tenancy, request: Request, status: int, reason: str, tenant: str | None,
                   token_id: str | None = None) -> None:
    """An operator's change, in the audit trail with the requests (durable before the answer)."""
    written = t.audit.append(status=status, reason=reason, tenant=tenant, token_id=token_id,
                             client=request.client[0] if request.client else None,
                             request_id=request.headers.get("x-request-id", ""))
    await asyncio.wrap_future(written)


async def create_token(t: Tenancy, request: Request) -> Response:
    body = decode(_CREATE, request.body or b"{}")
    field("tenant", check_tenant, body.tenant)
    field("name", check_name, body.name)
    field("tier", t.config.tier, body.tier)
    field("models", check_models, body.models)
    expires = field("expires_in", _duration, body.expires_in)
    field("expires_in", check_lifetime, expires)
    secret, record = await asyncio.to_thread(t.tokens.create, body.tenant, body.tier, body.models, expires, body.name)
    await _audited(t, request, 201, "token_created", record.tenant, record.id)
    return _json({**_token_view(record), "secret": secret}, status=201)


async def list_tokens(t: Tenancy, request: Request) -> Response:
    records = await asyncio.to_thread(t.store.list_tokens, _tenant(_query(request)))
    return _json({"object": "list", "data": [_token_view(r) for r in records]})


async def revoke_token(t: Tenancy, request: Request) -> Response:
    """The token as it is once revoked: a retried DELETE answers the same and records nothing."""
    record, revoked = await asyncio.to_thread(t.tokens.revoke, request.path_params["token_id"])
    if revoked:
        await _audited(t, request, 200, "token_revoked", record.tenant, record.id)
    return _json(_token_view(record))


async def rotate_token(t: Tenancy, request: Request) -> Response:
    body = decode(_ROTATE, request.body or b"{}")
    grace = field("grace", _duration, body.grace)
    field("grace", check_grace, grace)
    secret, new, old = await asyncio.to_thread(t.tokens.rotate, request.path_params["token_id"], grace)
    await _audited(t, request, 201, "token_rotated", new.tenant, new.id)  # new.rotated_from names the old
    return _json({**_token_view(new), "secret": secret, "replaces": _token_view(old)}, status=201)


async def usage(t: Tenancy, request: Request) -> Response:
    q = _query(request)
    since = field("since", _moment, q.get("since", "30d"))
    until = field("until", _moment, q["until"]) if "until" in q else None
    if until is not None and until < since:
        raise FieldError("until", "until is before since")
    by, fmt = q.get("by"), q.get("format", "json")
    if by not in (None, "model", "day", "tenant"):
        raise FieldError("by", "by: model, day or tenant")
    if fmt not in ("json", "csv", "table"):
        raise FieldError("format", "format: json, csv or table")
    rows = await asyncio.to_thread(t.store.usage, _tenant(q), since, until)
    text = render(summarize(rows, by), fmt, by)
    return Response(body=text.encode(), content_type={"json": "application/json", "csv": "text/csv"}.get(fmt, "text/plain"))


async def audit_verify(t: Tenancy, request: Request) -> Response:
    def run() -> tuple[list, dict[str, tuple[int, str]]]:  # type: ignore[type-arg]
        heads = t.store.audit_heads()
        return verify(t.store.audit_records(), heads), heads

    problems, heads = await asyncio.to_thread(run)
    return _json({"intact": not problems, "problems": problems,
                  "heads": [{"chain": c, "seq": seq, "hash": h} for c, (seq, h) in sorted(heads.items())]})


async def audit_export(t: Tenancy, request: Request) -> Response:
    prompts = _query(request).get("prompts", "false")
    if prompts not in ("true", "false"):
        raise FieldError("prompts", "prompts: true or false")
    cipher = t.audit.cipher if prompts == "true" else None
    if prompts == "true" and cipher is None:
        raise FieldError("prompts", "this gateway keeps no prompt text ([tenancy] prompt_retention is not set)")
    body = await asyncio.to_thread(lambda: b"".join(export_jsonl(t.store.audit_records(), cipher)))
    if cipher is not None:  # someone read the prompts: that access is on the record too
        await _audited(t, request, 200, "prompts_exported", None)
    return Response(body=body, content_type="application/x-ndjson")


async def audit_purge(t: Tenancy, request: Request) -> Response:
    purged = await asyncio.to_thread(t.audit.purge)
    await _audited(t, request, 200, "prompts_purged", None)
    return _json({"purged": purged})
