"""The console's history API pages through the store's time-indexed query: `next` and `before`."""

from __future__ import annotations

import asyncio

from gateway.tenancy import FakeClock, Tenancy
from tests.console.harness import ADMIN, MODELS, Harness, console_gateway


def test_history_pages_follow_next_and_stay_in_the_tenant(tenancy: Tenancy, clock: FakeClock) -> None:
    acme, _ = tenancy.tokens.create("acme", "big", ["*"])
    beta, _ = tenancy.tokens.create("beta", "big", ["*"])

    async def test(h: Harness) -> None:
        for i in range(7):
            assert (await h.chat(acme if i % 2 == 0 else beta, model=MODELS[i % 2])).status == 200
            clock.advance(10)
        acme_rows, cursor, pages = [], None, 0
        while True:
            page = await h.api("/console/api/history?limit=2" + (f"&before={cursor}" if cursor else ""), acme)
            acme_rows += page["data"]
            pages += 1
            cursor = page["next"]
            if cursor is None:
                break
        assert pages == 2 and [r["tenant"] for r in acme_rows] == ["acme"] * 4
        assert [r["time"] for r in acme_rows] == [clock.time() - 10 * k for k in (1, 3, 5, 7)]
        # A cursor taken from the admin's view gives a tenant nothing of another's.
        admin_first = await h.api("/console/api/history?limit=1", ADMIN)
        assert admin_first["data"][0]["tenant"] == "acme" and admin_first["next"]
        older = await h.api(f"/console/api/history?before={admin_first['next']}", beta)
        assert [r["tenant"] for r in older["data"]] == ["beta"] * 3 and older["next"] is None
        full = await h.api("/console/api/history?limit=4", acme)
        assert len(full["data"]) == 4 and full["next"] is None  # exactly one page: no empty page after
        for bad in ("before=yesterday", "before=1.5", "before=1.5:x"):
            response = await h.request("/console/api/history?" + bad, acme)
            assert response.status == 400 and response.json()["error"]["code"] == "invalid_query", bad

    async def main() -> None:
        async with console_gateway(tenancy, clock) as h:
            await test(h)
    asyncio.run(asyncio.wait_for(main(), 60))
