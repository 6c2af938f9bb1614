"""The console's JSON API over real traffic: scoping per viewer, history filters, no prompt text."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.tenancy import FakeClock, Tenancy
from gateway.tenancy.store import UsageRow
from tests.console.harness import ADMIN, MODELS, Harness, console_gateway

SECRET_PROMPT = "the launch code is 0000"


def run(tenancy: Tenancy, clock: FakeClock, test: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with console_gateway(tenancy, clock) as h:
            await test(h)
    asyncio.run(asyncio.wait_for(main(), 60))


def test_console_api_scopes_every_answer_to_the_viewer(tenancy: Tenancy, clock: FakeClock) -> None:
    acme, _ = tenancy.tokens.create("acme", "big", ["qwen3:*"])
    beta, _ = tenancy.tokens.create("beta", "big", ["*"])

    async def test(h: Harness) -> None:
        for _ in range(3):
            assert (await h.chat(acme, content=SECRET_PROMPT)).status == 200
        assert (await h.chat(acme, stream=True)).status == 200
        assert (await h.chat(acme, model=MODELS[1])).status == 403  # not allowed: audited, no ledger row
        assert (await h.chat(beta, model=MODELS[1])).status == 200
        assert (await h.chat("llmaas-not-a-token")).status == 401

        assert await h.api("/console/api/me", ADMIN) == {"role": "admin", "tenant": None}
        assert await h.api("/console/api/me", acme) == {"role": "tenant", "tenant": "acme"}

        usage = {m["key"]: m for m in (await h.api("/console/api/usage", ADMIN))["models"]}
        assert usage[MODELS[0]]["requests"] == 4 and usage[MODELS[1]]["requests"] == 1
        assert usage[MODELS[0]]["output_tokens"] == 12 and usage[MODELS[0]]["cost_eur"] > 0
        mine = (await h.api("/console/api/usage?since=7d", acme))["models"]
        assert [m["key"] for m in mine] == [MODELS[0]]

        series = await h.api("/console/api/series?minutes=5", ADMIN)
        assert len(series["times"]) == 5 and series["times"][-1] == int(clock.time() // 60) * 60
        q = series["models"][MODELS[0]]
        assert sum(q["requests"]) == 5  # the 403 is counted (and its 4xx), the 401 has no tenant yet
        assert q["ttft_p99_ms"][-1] is not None and q["e2e_p50_ms"][-1] > 0
        assert q["output_tokens_per_s"][-1] == round(12 / 60, 3)
        assert set((await h.api("/console/api/series", beta))["models"]) == {MODELS[1]}

        everything = (await h.api("/console/api/history", ADMIN))["data"]
        assert {r["tenant"] for r in everything} == {"acme", "beta", None}  # None: the bad token
        assert [r["time"] for r in everything] == sorted((r["time"] for r in everything), reverse=True)
        rows = (await h.api("/console/api/history", acme))["data"]
        assert {r["tenant"] for r in rows} == {"acme"} and len(rows) == 5
        ok = [r for r in rows if r["status"] == 200]
        assert len(ok) == 4 and all(r["verdict"] == "allow" and r["output_tokens"] == 3 for r in ok)
        assert all(r["latency_ms"] is not None and r["request_id"] for r in ok)
        [refused] = [r for r in rows if r["status"] == 403]
        assert refused["reason"] == "permission" and refused["model"] == MODELS[1]

        # A tenant never reads another's rows: not through a filter, not through a glob.
        denied = await h.request("/console/api/history?tenant=beta", acme)
        assert denied.status == 403 and denied.json()["error"]["code"] == "forbidden"
        assert (await h.api(f"/console/api/history?model={MODELS[1]}", acme))["data"] == [refused]
        beta_rows = (await h.api("/console/api/history?model=*", beta))["data"]
        assert [r["tenant"] for r in beta_rows] == ["beta"]
        assert (await h.api("/console/api/history?tenant=beta", ADMIN))["data"] == beta_rows

        for path in ("/console/api/history", "/console/api/usage", "/console/api/series"):
            for token in (ADMIN, acme):
                assert SECRET_PROMPT.encode() not in (await h.request(path, token)).content

    run(tenancy, clock, test)


def test_history_filters(tenancy: Tenancy, clock: FakeClock) -> None:
    acme, _ = tenancy.tokens.create("acme", "big", ["*"])
    narrow, _ = tenancy.tokens.create("acme", "big", ["qwen3:*"])

    async def test(h: Harness) -> None:
        start = clock.time()
        for model in (MODELS[0], MODELS[1], MODELS[0]):
            assert (await h.chat(acme, model=model)).status == 200
            clock.advance(600)
        assert (await h.chat(narrow, model=MODELS[1])).status == 403
        get = lambda q: h.api("/console/api/history?" + q, acme)  # noqa: E731
        assert [r["model"] for r in (await get("model=qwen3:*"))["data"]] == [MODELS[0]] * 2
        assert [r["model"] for r in (await get("model=mistral*"))["data"]] == [MODELS[1]] * 2
        assert [r["status"] for r in (await get("status=error"))["data"]] == [403]
        assert [r["status"] for r in (await get("status=4xx"))["data"]] == [403]
        assert (await get("status=5xx"))["data"] == []
        assert len((await get("status=ok"))["data"]) == 3 and len((await get("status=200"))["data"]) == 3
        assert len((await get(f"since={start + 300}"))["data"]) == 3  # the last two answers and the 403
        assert len((await get(f"since={start}&until={start + 900}"))["data"]) == 2
        assert len((await get("since=2026-01-15T00:10:00Z&until=2026-01-15T00:15:00"))["data"]) == 1
        assert len((await get("since=5m"))["data"]) == 1  # only the 403, at start + 1800
        newest = (await get("limit=2"))["data"]
        assert [r["status"] for r in newest] == [403, 200]
        for bad in ("since=yesterday", "limit=0", "limit=x", "status=teapot"):
            response = await h.request("/console/api/history?" + bad, acme)
            assert response.status == 400 and response.json()["error"]["code"] == "invalid_query", bad

    run(tenancy, clock, test)


def test_login_models_and_alerts(tenancy: Tenancy, clock: FakeClock) -> None:
    acme, _ = tenancy.tokens.create("acme", "small", ["qwen3:*"])  # 1 EUR a month
    tenancy.tokens.create("beta", "small", ["*"])

    async def test(h: Harness) -> None:
        for token in (None, "wrong", ADMIN + "x", "Bearer"):
            response = await h.request("/console/api/me", token)
            assert response.status == 401 and response.json()["error"]["code"] == "invalid_console_token"

        admin_models = {m["id"]: m for m in (await h.api("/console/api/models", ADMIN))["data"]}
        assert admin_models["mistral-small3.2:24b"]["phase"] == "deprecated"
        assert admin_models["mistral-small3.2:24b"]["end_of_support"] == "2026-03-30"
        assert admin_models["qwen3:8b"]["served"] is True and admin_models["gemma3:4b"]["served"] is False
        tenant_models = [m["id"] for m in (await h.api("/console/api/models", acme))["data"]]
        assert tenant_models and all(m.startswith("qwen3:") for m in tenant_models)

        # A host going down fires a fleet alert (admin only); acme's spending fires its budget alert.
        host = next(iter(h.gateway.fleet.hosts.values()))
        spent = UsageRow(request_id="x", time=clock.time(), tenant="acme", token_id="t", model="m", input_tokens=0,
                         cached_input_tokens=0, output_tokens=0, reasoning_tokens=0, cost_eur=0.6, status=200,
                         latency_ms=1.0)
        await asyncio.wrap_future(h.tenancy.store.record(spent, None))
        host.healthy = False
        events = h.alerts.evaluate()
        assert sorted(e.rule for e in events) == ["engine-host-down", "tenant-budget-near"]
        admin = await h.api("/console/api/alerts", ADMIN)
        assert sorted(e["rule"] for e in admin["active"]) == ["engine-host-down", "tenant-budget-near"]
        mine = await h.api("/console/api/alerts", acme)
        assert [(e["rule"], e["labels"]) for e in mine["active"]] == [("tenant-budget-near", {"tenant": "acme"})]
        host.healthy = True
        clock.advance(60)
        [resolved] = h.alerts.evaluate()
        admin = await h.api("/console/api/alerts", ADMIN)
        assert [e["rule"] for e in admin["active"]] == ["tenant-budget-near"]
        assert admin["history"][0]["state"] == "resolved" and admin["history"][0]["rule"] == resolved.rule

    run(tenancy, clock, test)


def test_page_and_static_files_are_served(tenancy: Tenancy, clock: FakeClock) -> None:
    async def test(h: Harness) -> None:
        page = await h.request("/console")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
        html = page.content.decode()
        for src in ("/console/static/vendor/uPlot.iife.min.js", "/console/static/console.js",
                    "/console/static/console.css", "/console/static/vendor/uPlot.min.css"):
            assert src in html
            response = await h.request(src)
            assert response.status == 200 and len(response.content) > 500, src
        js = await h.request("/console/static/vendor/uPlot.iife.min.js")
        assert js.headers["content-type"].startswith("text/javascript") and b"uPlot" in js.content
        assert (await h.request("/console/static/../api.py")).status == 404
        assert (await h.request("/console/static/vendor/uPlot.LICENSE")).content.startswith(b"The MIT License")

    run(tenancy, clock, test)


def test_a_secret_rotated_on_a_read_reaches_its_owner(tenancy: Tenancy, clock: FakeClock) -> None:
    # A key past its max age rotates on its next use; the console never rotates it (its answers
    # would drop the new secret), the models list does and hands the secret over.
    secret, record = tenancy.tokens.create("acme", "small")
    clock.advance(91 * 86400)

    async def test(h: Harness) -> None:
        assert (await h.request("/console/api/me", secret)).status == 200
        assert tenancy.store.get_token(record.id).rotated_to is None
        listed = await h.request("/v1/models", secret)
        assert listed.status == 200 and tenancy.store.get_token(record.id).rotated_to is not None
        new_secret = listed.headers["x-llmaas-new-api-key"]
        assert (await h.request("/v1/models/qwen3:8b", new_secret)).status == 200

    run(tenancy, clock, test)


def test_what_could_flood_or_break_the_console_is_refused(tenancy: Tenancy, clock: FakeClock) -> None:
    acme, _ = tenancy.tokens.create("acme", "small")

    async def test(h: Harness) -> None:
        # Invented model names, without a key: refused, and no series of their own.
        for i in range(50):
            assert (await h.chat("nope", model=f"junk-{i}")).status == 401
        huge = await h.chat(acme, model="x" * 5000)
        assert huge.status == 400 and huge.json()["error"]["param"] == "model" and len(huge.content) < 1000
        assert (await h.chat(acme)).status == 200
        series = (await h.api("/console/api/series?minutes=5", ADMIN))["models"]
        assert set(series) == {"other", MODELS[0]} and sum(series["other"]["requests"]) == 50
        # A cursor no history page wrote: a 400, not a 500.
        for cursor in ("1:99999999999999999999", "1:-5", "nan:1", "x"):
            response = await h.request(f"/console/api/history?before={cursor}", ADMIN)
            assert response.status == 400, (cursor, response.content)

    run(tenancy, clock, test)
