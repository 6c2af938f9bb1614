"""Who is looking at the console: the admin (the admin token) or one tenant (one of its API tokens).

Every /console/api/* call carries `Authorization: Bearer <token>`. The admin token is compared as a
SHA-256 digest in constant time (as the admin API does); anything else must be a valid tenant token
(`Tenancy.authenticate`, which also audits a refused one). A tenant viewer only ever gets queries
scoped to its own tenant: the scoping happens here, once, not in each handler.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway.http import Request
from gateway.tenancy import Principal, Tenancy, TenancyError


@dataclass(slots=True, frozen=True)
class Viewer:
    tenant: str | None  # None: the admin, who sees every tenant
    principal: Principal | None = None  # a tenant's token: which models it may see

    @property
    def admin(self) -> bool:
        return self.tenant is None


class ConsoleDenied(Exception):
    """No valid token: 401 (the page goes back to its login)."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConsoleForbidden(ConsoleDenied):
    """A valid token asking for what it may not see (a tenant asking for another's rows): 403."""

    status = 403


class ConsoleAuth:
    def __init__(self, tenancy: Tenancy | None, admin_token: str | None) -> None:
        if admin_token is not None and len(admin_token) < 16:
            raise ValueError("the admin token needs at least 16 characters")
        self._admin = hashlib.sha256(admin_token.encode()).digest() if admin_token else None
        self._tenancy = tenancy

    def viewer(self, request: Request) -> Viewer:
        header = request.headers.get("authorization", "")
        if header[:7].lower() != "bearer " or not header[7:].strip():
            raise ConsoleDenied("Log in with an admin or tenant token.")
        presented = header[7:].strip()
        if self._admin is not None and hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._admin):
            return Viewer(None)
        if self._tenancy is None:
            raise ConsoleDenied("Only the admin token opens this console (tenancy is off).")
        client = request.client[0] if request.client else None
        try:
            # Never rotated here: the console's answers do not carry a new secret to its owner.
            principal = self._tenancy.authenticate(header, client=client, rotate=False)
        except TenancyError as exc:
            raise ConsoleDenied(exc.message) from None
        return Viewer(principal.tenant, principal)
