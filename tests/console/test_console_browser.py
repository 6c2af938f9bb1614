"""The console in a real headless browser (Debian's chromium, driven by Playwright over the DevTools
protocol): log in, charts drawn from real requests, live updates, history filters, an alert
appearing, and a tenant seeing only its own rows. Screenshots go to build/test-artifacts/console/
(or $LLMAAS_TEST_ARTIFACTS), kept out of git."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from gateway.tenancy import FakeClock, Tenancy
from tests.console.harness import ADMIN, MODELS, Harness, console_gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("LLMAAS_TEST_ARTIFACTS", "build/test-artifacts")) / "console"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


async def traffic(h: Harness, acme: str, beta: str) -> None:
    """Three minutes of requests on two models, so each chart has several points."""
    for minute in range(3):
        for i in range(4):
            assert (await h.chat(acme, content=f"q{minute}-{i}")).status == 200
        assert (await h.chat(acme, stream=True)).status == 200
        assert (await h.chat(beta, model=MODELS[1])).status == 200
        h.clock.advance(60)
    assert (await h.chat(acme, model=MODELS[1])).status == 403  # acme's token may not use it


def test_console_in_a_headless_browser(tenancy: Tenancy, clock: FakeClock) -> None:
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        pytest.fail("the browser test needs Playwright's Python package (pip install playwright; no browser "
                    "download: it drives the system chromium)")
    acme, _ = tenancy.tokens.create("acme", "big", ["qwen3:*"])
    beta, _ = tenancy.tokens.create("beta", "big", ["*"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        async with console_gateway(tenancy, clock, engine_delay_s=0.005) as h, async_playwright() as pw:
            await traffic(h, acme, beta)
            browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                               args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 2200})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"http://127.0.0.1:{h.port}/console")
                await expect(page.locator("#login")).to_be_visible()

                await page.fill("#token", "not-a-token")
                await page.click("#login-form button")
                await expect(page.locator("#login-error")).not_to_be_empty()

                await page.fill("#token", ADMIN)
                await page.click("#login-form button")
                await expect(page.locator("#who")).to_have_text("admin (all tenants)")
                assert await page.evaluate("sessionStorage.getItem('llmaas.console.token')") == ADMIN

                # Usage table: both models, with the ledger's counts.
                await expect(page.locator("#usage-table[data-loaded='1']")).to_have_count(1)
                usage = page.locator("#usage-table tbody tr")
                await expect(usage).to_have_count(2)
                qwen = page.locator("#usage-table tbody tr", has_text=MODELS[0])
                await expect(qwen.locator("td").nth(1)).to_have_text("15")  # 3 x (4 + 1 streamed)

                # Charts: uPlot canvases, one line per model and quantile, from the recorder's minutes.
                await expect(page.locator(".charts")).to_have_attribute("data-models", ",".join(sorted(MODELS)))
                for chart in ("ttft", "e2e", "throughput", "requests"):
                    await expect(page.locator(f"#chart-{chart} .uplot canvas")).to_have_count(1)
                legend = await page.locator("#chart-ttft .u-legend .u-series").all_inner_texts()
                assert any(f"{MODELS[0]} p99" in text for text in legend), legend
                await expect(page.locator("#live")).to_contain_text("live: 19 requests")

                # Catalog: the model in its deprecation notice says so.
                deprecated = page.locator("#models-table tbody tr", has_text=MODELS[1])
                await expect(deprecated.locator(".phase-deprecated")).to_have_text("deprecated")

                # History: every tenant for the admin, then filtered by model and status.
                await expect(page.locator("#history-table")).to_have_attribute("data-rows", "20")
                await expect(page.locator("#tenant-filter")).to_be_visible()
                await page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
                await page.fill("#history-form input[name=model]", "mistral*")
                await page.click("#history-form button")
                await expect(page.locator("#history-table")).to_have_attribute("data-rows", "4")
                await page.select_option("#history-form select[name=status]", "error")
                await page.click("#history-form button")
                await expect(page.locator("#history-table")).to_have_attribute("data-rows", "1")
                await expect(page.locator("#history-table tbody tr td").nth(5)).to_have_text("permission")
                await expect(page.locator("#history-more")).to_be_hidden()
                await page.screenshot(path=str(ARTIFACTS / "history-filtered.png"), full_page=True)
                # Pages: 8 rows at a time, then the older ones under the same filters.
                await page.select_option("#history-form select[name=status]", "")
                await page.fill("#history-form input[name=model]", "")
                await page.fill("#history-form input[name=limit]", "8")
                await page.click("#history-form button")
                await expect(page.locator("#history-table")).to_have_attribute("data-rows", "8")
                for rows in ("16", "20"):
                    await page.click("#history-more")
                    await expect(page.locator("#history-table")).to_have_attribute("data-rows", rows)
                await expect(page.locator("#history-more")).to_be_hidden()
                ids = await page.locator("#history-table tbody tr td:nth-child(2)").all_text_contents()
                assert len(set(ids)) == 20
                await page.fill("#history-form input[name=limit]", "100")

                # Live: new traffic and an alert show up without a reload (the page polls).
                await expect(page.locator("#alerts-active")).to_have_attribute("data-count", "0")
                for _ in range(2):
                    assert (await h.chat(acme)).status == 200
                next(iter(h.gateway.fleet.hosts.values())).healthy = False
                assert [e.rule for e in h.alerts.evaluate()] == ["engine-host-down"]
                await expect(page.locator("#alerts-active")).to_have_attribute("data-count", "1", timeout=12_000)
                await expect(page.locator("#alerts-active tbody")).to_contain_text("engine-host-down")
                await expect(page.locator("#live")).to_contain_text("live: 21 requests")
                await page.screenshot(path=str(ARTIFACTS / "alert.png"), full_page=True)

                # A tenant: its own rows only, no tenant column, no fleet alerts.
                await page.click("#logout")
                await expect(page.locator("#login")).to_be_visible()
                await page.fill("#token", acme)
                await page.click("#login-form button")
                await expect(page.locator("#who")).to_have_text("tenant acme")
                await expect(page.locator("#history-table")).to_have_attribute("data-rows", "18")
                await expect(page.locator("#history-table thead th.admin-only")).to_be_hidden()
                await expect(page.locator("#tenant-filter")).to_be_hidden()
                await expect(page.locator("#alerts-active")).to_have_attribute("data-count", "0")
                # Its own series only: 18 of the 21 requests (its refused try at MODELS[1] included).
                await expect(page.locator("#live")).to_contain_text("live: 18 requests")
                await expect(page.locator("#usage-table tbody tr")).to_have_count(1)
                await page.screenshot(path=str(ARTIFACTS / "tenant.png"), full_page=True)
                assert errors == []
            finally:
                await browser.close()

    asyncio.run(asyncio.wait_for(main(), 90))
