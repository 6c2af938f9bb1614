"""Per-tenant security policies through the admin API, in front of an instant engine double: the
admin sets a tenant to flag_only and its next blocking prompt is served, flagged; only the admin
token opens the routes; bad bodies are 400s naming the field; policies survive a restart."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.fleet.config import GatewayConfig, ModelEntry
from gateway.gateway_server import Gateway
from gateway.http import serve
from gateway.tenancy import Catalog, FakeClock, SqliteStore, Tenancy
from gateway.tenancy.tiers import load_config
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.raw_client import RawResponse, parse_response
from tests.gateway.test_gateway_stages import ATTACK, CURRENT, NOW, chat

ADMIN = "admin-token-0123456789abcdef"
POLICY = "/admin/v1/tenants/lenient/security-policy"
FLAG_ONLY = {"structure": "flag_only", "patterns": "flag_only", "behaviour": "flag_only"}


async def call(port: int, method: str, path: str, token: str | None, body: object = None) -> RawResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    head = (f"{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n{auth}"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + data)
        return parse_response(await reader.read())
    finally:
        writer.close()


def open_tenancy(db: Path) -> Tenancy:
    clock = FakeClock(NOW)
    return Tenancy(SqliteStore(db), load_config(None), Catalog.load(clock), clock)


def run(tenancy: Tenancy, test: Callable[[int, FakeEngine], Awaitable[None]]) -> None:
    async def main() -> None:
        engine = FakeEngine("a")
        await engine.start()
        gateway = Gateway(GatewayConfig(models=[ModelEntry(name=CURRENT, hosts=[engine.url])]), tenancy=tenancy)
        await gateway.start()
        server = await serve(gateway.router(admin_token=ADMIN), "127.0.0.1", 0)
        try:
            await test(server.port, engine)
        finally:
            await server.shutdown(1.0)
            await gateway.fleet.stop()
            await engine.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_admin_sets_flag_only_and_the_next_blocking_prompt_is_served_flagged(tmp_path: Path) -> None:
    tenancy = open_tenancy(tmp_path / "t.db")
    lenient, _ = tenancy.tokens.create("lenient", "standard")
    strict, _ = tenancy.tokens.create("strict", "standard")

    async def test(port: int, engine: FakeEngine) -> None:
        attack = chat(CURRENT, ATTACK)
        assert (await call(port, "POST", "/v1/chat/completions", lenient, attack)).status == 400
        missing = await call(port, "GET", POLICY, ADMIN)
        assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"

        put = await call(port, "PUT", POLICY, ADMIN, FLAG_ONLY)
        assert put.status == 200
        assert put.json() == {"tenant": "lenient", "policy": FLAG_ONLY, "updated_at": "2026-01-15T00:00:00Z"}
        assert (await call(port, "GET", POLICY, ADMIN)).json() == put.json()
        assert (await call(port, "GET", "/admin/v1/security-policies", ADMIN)).json()["data"] == [put.json()]

        assert (await call(port, "POST", "/v1/chat/completions", lenient, attack)).status == 200
        assert (await call(port, "POST", "/v1/chat/completions", strict, attack)).status == 400  # others unchanged
        assert len(engine.requests) == 1

        # Only the layers named change: patterns alone on again blocks this prompt again.
        assert (await call(port, "PUT", POLICY, ADMIN, {"structure": "flag_only", "behaviour": "off"})).status == 200
        assert (await call(port, "POST", "/v1/chat/completions", lenient, attack)).status == 400
        assert (await call(port, "PUT", POLICY, ADMIN, FLAG_ONLY)).status == 200

    run(tenancy, test)
    records = [a for a in tenancy.store.audit_records() if a.tenant == "lenient"]
    [served] = [a for a in records if a.reason == "ok"]
    assert served.verdict == "flag"
    # Each change of the policy is in the audit trail too, with the operator's address.
    changes = [a for a in records if a.reason == "security_policy_set"]
    assert len(changes) == 3 and all(a.client == "127.0.0.1" and a.token_id is None for a in changes)
    tenancy.close()

    reopened = open_tenancy(tmp_path / "t.db")  # a restart keeps the policy

    async def after_restart(port: int, engine: FakeEngine) -> None:
        assert (await call(port, "POST", "/v1/chat/completions", lenient, chat(CURRENT, ATTACK))).status == 200
        assert (await call(port, "DELETE", POLICY, ADMIN)).json() == {"tenant": "lenient", "deleted": True}
        assert (await call(port, "POST", "/v1/chat/completions", lenient, chat(CURRENT, ATTACK))).status == 400
        assert (await call(port, "DELETE", POLICY, ADMIN)).status == 404

    run(reopened, after_restart)
    reopened.close()


def test_only_the_admin_token_sets_a_policy(tmp_path: Path) -> None:
    tenancy = open_tenancy(tmp_path / "t.db")
    lenient, _ = tenancy.tokens.create("lenient", "standard")

    async def test(port: int, engine: FakeEngine) -> None:
        for token in (None, lenient, ADMIN + "x"):
            for method, body in (("PUT", FLAG_ONLY), ("GET", None), ("DELETE", None)):
                response = await call(port, method, POLICY, token, body)
                assert response.status == 401, (token, method)
                assert response.json()["error"]["code"] == "invalid_admin_token"
        listed = await call(port, "GET", "/admin/v1/security-policies", lenient)
        assert listed.status == 401
        # Nothing a tenant sends with its own requests changes its policy.
        sneaky = chat(CURRENT, ATTACK, security=FLAG_ONLY, policy=FLAG_ONLY)
        refused = await call(port, "POST", "/v1/chat/completions", lenient, sneaky)
        assert refused.status == 400 and refused.json()["error"]["code"] == "prompt_injection_detected"
        assert (await call(port, "GET", POLICY, ADMIN)).status == 404

    run(tenancy, test)
    assert tenancy.security_policies.records() == []
    tenancy.close()


def test_bad_bodies_are_400s_naming_the_field(tmp_path: Path) -> None:
    tenancy = open_tenancy(tmp_path / "t.db")

    async def test(port: int, engine: FakeEngine) -> None:
        for body, param in (({"patterns": "sometimes"}, "patterns"), ({"behaviour": 1}, "behaviour"),
                            ({"pattern": "off"}, "pattern"), ([], None), (b"{not json", None), (b"", None)):
            response = await call(port, "PUT", POLICY, ADMIN, body)
            assert response.status == 400, body
            error = response.json()["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", param), body
            assert error["message"].startswith("Invalid body: ")
        assert (await call(port, "GET", POLICY, ADMIN)).status == 404  # nothing was stored
        missing = await call(port, "POST", "/admin/v1/tokens", ADMIN, {"tenant": "acme"})
        assert missing.status == 400 and missing.json()["error"]["param"] == "tier"
        nobody = await call(port, "PUT", "/admin/v1/tenants/a%20b/security-policy", ADMIN, {"patterns": "off"})
        assert nobody.status == 400 and nobody.json()["error"]["param"] == "tenant"

    run(tenancy, test)
    tenancy.close()
