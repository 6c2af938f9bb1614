from __future__ import annotations

import asyncio
import json

import pytest

from gateway.admin import add_admin_routes
from gateway.http import Request, Response, Router
from gateway.tenancy import AuthenticationError, Counts, FakeClock, Tenancy

ADMIN = "admin-secret-0123456789"


@pytest.fixture
def router(tenancy: Tenancy) -> Router:
    r = Router()
    add_admin_routes(r, tenancy, ADMIN)
    return r


def call(router: Router, method: str, target: str, body: object = None, token: str = ADMIN) -> Response:
    path, _, query = target.partition("?")
    handler, params = router.resolve(method, path)
    request = Request(method=method, path=path, query_string=query,
                      headers={"authorization": f"Bearer {token}"} if token else {},
                      body=json.dumps(body).encode() if body is not None else b"", client=("127.0.0.1", 1),
                      path_params=params)
    response = asyncio.run(handler(request))
    assert isinstance(response, Response)
    return response


def test_admin_token_required(router: Router, tenancy: Tenancy) -> None:
    assert call(router, "GET", "/admin/v1/tokens", token="").status == 401
    assert call(router, "GET", "/admin/v1/tokens", token=ADMIN + "x").status == 401
    secret, _ = tenancy.tokens.create("acme", "small")
    assert call(router, "GET", "/admin/v1/tokens", token=secret).status == 401  # a tenant token is no admin
    with pytest.raises(ValueError):
        add_admin_routes(Router(), tenancy, "short")


def test_token_lifecycle_over_http(router: Router, tenancy: Tenancy) -> None:
    r = call(router, "POST", "/admin/v1/tokens", {"tenant": "acme", "tier": "small", "models": ["qwen3:*"],
                                                   "expires_in": "30d"})
    assert r.status == 201
    created = json.loads(r.body)
    assert tenancy.authenticate(f"Bearer {created['secret']}").token_id == created["id"]
    listed = json.loads(call(router, "GET", "/admin/v1/tokens?tenant=acme").body)["data"]
    assert [t["id"] for t in listed] == [created["id"]] and "secret" not in listed[0]
    rotated = json.loads(call(router, "POST", f"/admin/v1/tokens/{created['id']}/rotate", {"grace": "1h"}).body)
    assert rotated["replaces"]["rotated_to"] == rotated["id"]
    assert tenancy.authenticate(f"Bearer {rotated['secret']}").token_id == rotated["id"]
    assert call(router, "DELETE", f"/admin/v1/tokens/{rotated['id']}").status == 200
    with pytest.raises(AuthenticationError):
        tenancy.authenticate(f"Bearer {rotated['secret']}")


@pytest.mark.parametrize("body,param", [
    ({"tenant": "acme", "tier": "gold"}, "tier"),
    ({"tenant": "acme"}, "tier"),
    ({"tenant": "a", "tier": "small", "expires_in": "x"}, "expires_in"),
    ({"tenant": "a", "tier": "small", "expires_in": "0d"}, "expires_in"),
    ({"tenant": "a", "tier": "small", "expires_in": "99999999999d"}, "expires_in"),
    ({"tenant": "", "tier": "small"}, "tenant"),
    ({"tenant": "a\u0000b", "tier": "small"}, "tenant"),
    ({"tenant": "a b", "tier": "small"}, "tenant"),
    ({"tenant": "a", "tier": "small", "models": []}, "models"),
    ({"tenant": "a", "tier": "small", "models": ["  "]}, "models"),
])
def test_a_bad_token_request_is_a_400_naming_its_field_and_stores_nothing(router: Router, tenancy: Tenancy,
                                                                          body: dict, param: str) -> None:
    r = call(router, "POST", "/admin/v1/tokens", body)
    assert r.status == 400 and json.loads(r.body)["error"]["param"] == param
    assert tenancy.store.list_tokens() == []


@pytest.mark.parametrize("target,param", [
    ("/admin/v1/usage?by=week", "by"), ("/admin/v1/usage?by=", "by"), ("/admin/v1/usage?since=", "since"),
    ("/admin/v1/usage?format=xml", "format"), ("/admin/v1/usage?since=1d&until=2d", "until"),
    ("/admin/v1/usage?tenant=", "tenant"), ("/admin/v1/tokens?tenant=", "tenant"),
])
def test_a_bad_query_is_a_400_naming_its_parameter(router: Router, target: str, param: str) -> None:
    r = call(router, "GET", target)
    assert r.status == 400 and json.loads(r.body)["error"]["param"] == param


def raw_call(router: Router, method: str, path: str, body: bytes) -> Response:
    handler, params = router.resolve(method, path)
    request = Request(method=method, path=path, query_string="", headers={"authorization": f"Bearer {ADMIN}"},
                      body=body, client=("127.0.0.1", 1), path_params=params)
    return asyncio.run(handler(request))


@pytest.mark.parametrize("method,path,body,param", [
    ("POST", "/admin/v1/tokens", b'{"tenant": "acme", "tier": "small", "tenant": "other"}', "tenant"),
    ("PUT", "/admin/v1/tenants/acme/security-policy", b'{"patterns": "off", "patterns": "on"}', "patterns"),
])
def test_a_field_given_twice_is_a_400_not_the_last_one_silently(router: Router, tenancy: Tenancy, method: str,
                                                                 path: str, body: bytes, param: str) -> None:
    r = raw_call(router, method, path, body)
    assert r.status == 400 and json.loads(r.body)["error"]["param"] == param
    assert tenancy.store.list_tokens() == [] and tenancy.security_policies.records() == []


@pytest.mark.parametrize("name", ["line\nforged row", "\x1b[2Jcleared", "n" * 257])
def test_a_token_name_a_terminal_would_act_on_is_a_400(router: Router, tenancy: Tenancy, name: str) -> None:
    r = call(router, "POST", "/admin/v1/tokens", {"tenant": "acme", "tier": "small", "name": name})
    assert r.status == 400 and json.loads(r.body)["error"]["param"] == "name"
    assert tenancy.store.list_tokens() == []
    ok = call(router, "POST", "/admin/v1/tokens", {"tenant": "acme", "tier": "small", "name": "Ünïcode ✓"})
    assert ok.status == 201


def test_a_grace_past_any_date_is_a_400_and_a_long_one_keeps_the_old_key_working(router: Router,
                                                                                  tenancy: Tenancy) -> None:
    # A grace past year 9999 made the old key's every request fail: its expiry header had no date.
    secret, record = tenancy.tokens.create("acme", "small")
    for grace in ("99999999d", "9" * 400 + "d"):
        r = call(router, "POST", f"/admin/v1/tokens/{record.id}/rotate", {"grace": grace})
        assert r.status == 400 and json.loads(r.body)["error"]["param"] == "grace"
    assert tenancy.store.get_token(record.id).rotated_to is None  # type: ignore[union-attr]
    assert call(router, "POST", f"/admin/v1/tokens/{record.id}/rotate", {"grace": "36500d"}).status == 201
    headers = dict(tenancy.authenticate(f"Bearer {secret}").rotation_headers)
    assert headers["x-llmaas-api-key-expires"].startswith("21")


def test_an_expiry_stored_past_year_9999_still_authenticates(tenancy: Tenancy) -> None:
    # As a grace stored before it was bounded left it: the header says the last date there is.
    secret, record = tenancy.tokens.create("acme", "small")
    record.rotated_to, record.expires_at = "successor00", float("inf")
    tenancy.store.put_token(record).result()
    tenancy.tokens.lookup("unknown-id00")  # re-reads the tokens
    headers = dict(tenancy.authenticate(f"Bearer {secret}").rotation_headers)
    assert headers["x-llmaas-api-key-expires"] == "9999-12-31T23:59:59Z"


def test_bad_requests(router: Router, tenancy: Tenancy) -> None:
    assert call(router, "DELETE", "/admin/v1/tokens/nope").status == 404
    _, record = tenancy.tokens.create("acme", "small")
    r = call(router, "POST", f"/admin/v1/tokens/{record.id}/rotate", {"grace": "soon"})
    assert r.status == 400 and json.loads(r.body)["error"]["param"] == "grace"


def test_usage_and_audit_over_http(router: Router, tenancy: Tenancy) -> None:
    secret, _ = tenancy.tokens.create("acme", "big")
    p = tenancy.authenticate(f"Bearer {secret}")
    for model in ("qwen3:8b", "qwen3:8b", "granite3.3:8b"):
        a = tenancy.admit(p, model, prompt_tokens=4, max_tokens=4)
        tenancy.finish(a, Counts(4, 0, 3, 1)).result()
    r = call(router, "GET", "/admin/v1/usage?tenant=acme&since=2026-01-01&by=model")
    totals = {t["key"]: t["requests"] for t in json.loads(r.body)}
    assert totals == {"granite3.3:8b": 1, "qwen3:8b": 2}
    csv_body = call(router, "GET", "/admin/v1/usage?tenant=acme&since=2026-01-01&format=csv").body.decode()
    assert csv_body.splitlines()[1].startswith("total,3,12,")
    verdict = json.loads(call(router, "GET", "/admin/v1/audit/verify").body)
    assert verdict["intact"] and [h["seq"] for h in verdict["heads"]] == [3]
    lines = call(router, "GET", "/admin/v1/audit/export").body.splitlines()
    assert [json.loads(x)["model"] for x in lines] == ["qwen3:8b", "qwen3:8b", "granite3.3:8b"]
    assert json.loads(call(router, "POST", "/admin/v1/audit/purge").body) == {"purged": 0}


def test_over_a_real_server(tenancy: Tenancy) -> None:
    from gateway.http import serve

    async def scenario() -> list[tuple[int, bytes]]:
        router = Router()
        add_admin_routes(router, tenancy, ADMIN)
        server = await serve(router, "127.0.0.1", 0)
        out = []
        try:
            body = json.dumps({"tenant": "acme", "tier": "small"}).encode()
            for head in (f"POST /admin/v1/tokens HTTP/1.1\r\nauthorization: Bearer {ADMIN}\r\n"
                         f"content-type: application/json\r\ncontent-length: {len(body)}\r\n",
                         "GET /admin/v1/tokens?tenant=acme HTTP/1.1\r\n",
                         f"GET /admin/v1/tokens?tenant=acme HTTP/1.1\r\nauthorization: Bearer {ADMIN}\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                payload = body if head.startswith("POST") else b""
                writer.write((head + "host: x\r\nconnection: close\r\n\r\n").encode() + payload)
                raw = await reader.read()
                writer.close()
                status = int(raw.split(b" ", 2)[1])
                out.append((status, raw.partition(b"\r\n\r\n")[2]))
        finally:
            await server.shutdown(1.0)
        return out

    (created, c_body), (unauth, _), (listed, l_body) = asyncio.run(scenario())
    assert (created, unauth, listed) == (201, 401, 200)
    assert json.loads(l_body)["data"][0]["id"] == json.loads(c_body)["id"]


def test_operators_changes_are_audited(router: Router, tenancy: Tenancy) -> None:
    created = json.loads(call(router, "POST", "/admin/v1/tokens", {"tenant": "acme", "tier": "small"}).body)
    rotated = json.loads(call(router, "POST", f"/admin/v1/tokens/{created['id']}/rotate", {}).body)
    call(router, "DELETE", f"/admin/v1/tokens/{rotated['id']}")
    call(router, "POST", "/admin/v1/audit/purge")
    tenancy.store.flush()
    trail = [(a.reason, a.tenant, a.token_id, a.client) for a in tenancy.store.audit_records()]
    assert trail == [("token_created", "acme", created["id"], "127.0.0.1"),
                     ("token_rotated", "acme", rotated["id"], "127.0.0.1"),
                     ("token_revoked", "acme", rotated["id"], "127.0.0.1"),
                     ("prompts_purged", None, None, "127.0.0.1")]
    assert tenancy.audit.verify() == []


def test_revoking_twice_answers_the_token_as_it_is_and_records_once(router: Router, tenancy: Tenancy,
                                                                    clock: FakeClock) -> None:
    created = json.loads(call(router, "POST", "/admin/v1/tokens", {"tenant": "acme", "tier": "small"}).body)
    first = call(router, "DELETE", f"/admin/v1/tokens/{created['id']}")
    clock.advance(60.0)
    again = call(router, "DELETE", f"/admin/v1/tokens/{created['id']}")
    assert (first.status, again.status) == (200, 200) and json.loads(again.body) == json.loads(first.body)
    assert json.loads(first.body)["revoked_at"] is not None
    missing = call(router, "DELETE", "/admin/v1/tokens/abcdefghijkl")
    assert missing.status == 404 and json.loads(missing.body)["error"]["code"] == "not_found"
    tenancy.store.flush()
    assert [a.reason for a in tenancy.store.audit_records()] == ["token_created", "token_revoked"]


@pytest.mark.parametrize("models", [["x" * 2_000_000], ["m*"] * 1000])
def test_model_patterns_past_their_bounds_are_a_400(router: Router, tenancy: Tenancy, models: list[str]) -> None:
    # Every lookup of the token matches its patterns, and the lane each of its models at each push:
    # a 2 MB pattern was accepted.
    r = call(router, "POST", "/admin/v1/tokens", {"tenant": "acme", "tier": "small", "models": models})
    assert r.status == 400 and json.loads(r.body)["error"]["param"] == "models"
    assert tenancy.store.list_tokens() == []
    with pytest.raises(ValueError, match="at most"):
        tenancy.tokens.create("acme", "small", models)


def test_an_empty_body_is_named_as_such(router: Router) -> None:
    # msgspec calls it "Input data was truncated", which tells an operator nothing.
    r = call(router, "PUT", "/admin/v1/tenants/acme/security-policy")
    assert r.status == 400 and "the body is empty" in json.loads(r.body)["error"]["message"]


def test_the_export_gives_the_kept_prompts_only_when_asked_and_records_the_access(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gateway.tenancy import Catalog, SqliteStore
    from gateway.tenancy.encryption import load_key, new_key
    from gateway.tenancy.tiers import load_config

    clock = FakeClock(1768435200.0)
    keeping = Tenancy(SqliteStore(tmp_path / "k.db"), load_config(None), Catalog.load(clock), clock,
                      audit_key=load_key(new_key()), prompt_retention_s=86400)
    plain = Tenancy(SqliteStore(tmp_path / "p.db"), load_config(None), Catalog.load(clock), clock)
    try:
        router = Router()
        add_admin_routes(router, keeping, ADMIN)
        keeping.audit.append(status=200, reason="ok", request_id="r1", prompt='["secret plans"]').result()
        (line,) = call(router, "GET", "/admin/v1/audit/export").body.splitlines()
        assert "prompt_text" not in json.loads(line) and b"secret plans" not in line
        lines = [json.loads(x) for x in call(router, "GET", "/admin/v1/audit/export?prompts=true").body.splitlines()]
        assert lines[0]["prompt_text"] == '["secret plans"]'
        keeping.store.flush()
        assert [r.reason for r in keeping.store.audit_records()] == ["ok", "prompts_exported"]
        bad = call(router, "GET", "/admin/v1/audit/export?prompts=yes")
        assert bad.status == 400 and json.loads(bad.body)["error"]["param"] == "prompts"

        router = Router()
        add_admin_routes(router, plain, ADMIN)
        refused = call(router, "GET", "/admin/v1/audit/export?prompts=true")
        assert refused.status == 400 and "keeps no prompt text" in json.loads(refused.body)["error"]["message"]
    finally:
        keeping.close()
        plain.close()
