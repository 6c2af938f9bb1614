"""Admin routes for per-tenant prompt-security policies (gateway.tenancy.security_policies): each
layer (structure, patterns, behaviour) `on`, `flag_only` or `off`, over the config's policy.

    GET    /admin/v1/security-policies                 every policy an operator set
    GET    /admin/v1/tenants/{tenant}/security-policy  404 when none is set (the config's applies)
    PUT    /admin/v1/tenants/{tenant}/security-policy  {"structure", "patterns", "behaviour"}; an
                                                       absent layer is `on`, as in the config
    DELETE /admin/v1/tenants/{tenant}/security-policy  back to the config's policy

A change applies from the tenant's next request. Only the admin token opens these routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

import security
from gateway.admin.fields import decode, field
from gateway.cli_tokens import iso_time
from gateway.http import Request, Response
from gateway.tenancy import Tenancy
from gateway.tenancy.store import PolicyRecord
from gateway.tenancy.tokens import check_tenant

_POLICY = msgspec.json.Decoder(security.Policy)
# routes.py's recorder of an operator's change: (tenancy, request, status, reason, tenant).
Audited = Callable[[Tenancy, Request, int, str, str], Awaitable[None]]
_ENC = msgspec.json.Encoder()


def _view(record: PolicyRecord) -> dict[str, object]:
    return {"tenant": record.tenant, "policy": record.modes, "updated_at": iso_time(record.updated_at)}


def _json(body: object, status: int = 200) -> Response:
    return Response(status=status, body=_ENC.encode(body))


def _not_set(tenant: str) -> KeyError:
    return KeyError(f"No security policy is set for tenant `{tenant}`: the gateway config's applies.")


async def list_policies(t: Tenancy, request: Request) -> Response:
    return _json({"object": "list", "data": [_view(r) for r in t.security_policies.records()]})


async def get_policy(t: Tenancy, request: Request) -> Response:
    tenant = request.path_params["tenant"]
    record = t.security_policies.record(tenant)
    if record is None:
        raise _not_set(tenant)
    return _json(_view(record))


async def put_policy(t: Tenancy, request: Request, audited: Audited) -> Response:
    tenant = request.path_params["tenant"]
    field("tenant", check_tenant, tenant)  # a name no token could carry would set a policy for nobody
    policy = decode(_POLICY, request.body or b"")
    record = await asyncio.to_thread(t.security_policies.put, tenant, policy)
    await audited(t, request, 200, "security_policy_set", record.tenant)
    return _json(_view(record))


async def delete_policy(t: Tenancy, request: Request, audited: Audited) -> Response:
    tenant = request.path_params["tenant"]
    if not await asyncio.to_thread(t.security_policies.delete, tenant):
        raise _not_set(tenant)
    await audited(t, request, 200, "security_policy_deleted", tenant)
    return _json({"tenant": tenant, "deleted": True})
