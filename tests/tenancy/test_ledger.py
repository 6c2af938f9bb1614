from __future__ import annotations

import csv
import io
import json

import pytest

from gateway.tenancy import Counts, FakeClock, Prices, Tenancy, cost_eur
from gateway.tenancy.ledger import render, summarize
from gateway.tenancy.tiers import load_config


def test_cost_formula_defaults() -> None:
    # The issue's formula: input x 0.9 + output x 4 + reasoning x 21, EUR per million.
    c = Counts(input=1_000_000, cached_input=0, output=1_000_000, reasoning=0)
    assert cost_eur(c, Prices()) == pytest.approx(0.9 + 4.0)
    c = Counts(input=2_000_000, cached_input=500_000, output=3_000_000, reasoning=1_000_000)
    assert cost_eur(c, Prices()) == pytest.approx(2 * 0.9 + 2 * 4.0 + 1 * 21.0)
    assert cost_eur(c, Prices(cached_input=0.1)) == pytest.approx(1.5 * 0.9 + 0.5 * 0.1 + 2 * 4.0 + 21.0)


def test_default_config_has_the_issue_prices() -> None:
    config = load_config()
    assert config.default_prices == Prices(0.9, 0.9, 4.0, 21.0)
    assert {"free", "standard", "premium", "local"} <= set(config.tiers)


def test_prices_override_per_model_then_tier(tenancy: Tenancy) -> None:
    cfg = tenancy.config
    assert cfg.prices("qwen3:8b", cfg.tier("small")) == Prices()
    assert cfg.prices("qwen3:235b", cfg.tier("small")).input == 2.0
    both = cfg.prices("qwen3:235b", cfg.tier("big"))
    assert (both.input, both.output) == (2.0, 5.0)


def run(tenancy: Tenancy, secret: str, model: str, counts: Counts, status: int = 200) -> None:
    p = tenancy.authenticate(f"Bearer {secret}")
    a = tenancy.admit(p, model, prompt_tokens=counts.input, max_tokens=counts.output + 10)
    tenancy.finish(a, counts, status, latency_s=0.25).result()


def test_one_ledger_row_per_request_with_exact_counts(tenancy: Tenancy, clock: FakeClock) -> None:
    secret, record = tenancy.tokens.create("acme", "big")
    counts = [Counts(10, 4, 7, 0), Counts(20, 0, 9, 3), Counts(5, 0, 2, 0)]  # the last one aborted
    for i, c in enumerate(counts):
        run(tenancy, secret, "qwen3:235b" if i == 1 else "qwen3:8b", c, 499 if i == 2 else 200)
        clock.advance(86400)
    rows = tenancy.store.usage("acme", 0)
    assert [(r.input_tokens, r.cached_input_tokens, r.output_tokens, r.reasoning_tokens) for r in rows] == \
        [tuple(msgspec_astuple(c)) for c in counts]
    assert [r.status for r in rows] == [200, 200, 499] and rows[0].token_id == record.id
    assert rows[0].latency_ms == 250.0
    assert rows[1].cost_eur == pytest.approx((20 * 2.0 + 6 * 5.0 + 3 * 21.0) / 1e6)
    (total,) = summarize(rows)
    assert (total.requests, total.input_tokens, total.output_tokens) == (3, 35, 18)
    assert total.cost_eur == pytest.approx(sum(r.cost_eur for r in rows))
    by_model = {t.key: t.requests for t in summarize(rows, "model")}
    assert by_model == {"qwen3:8b": 2, "qwen3:235b": 1}
    assert len(summarize(rows, "day")) == 3
    assert tenancy.store.cost_since("acme", 0) == pytest.approx(total.cost_eur)


def msgspec_astuple(c: Counts) -> tuple[int, int, int, int]:
    return (c.input, c.cached_input, c.output, c.reasoning)


def test_refused_after_admission_gets_a_zero_row_and_frees_its_reservation(tenancy: Tenancy) -> None:
    secret, _ = tenancy.tokens.create("acme", "small")
    p = tenancy.authenticate(f"Bearer {secret}")
    a = tenancy.admit(p, "qwen3:8b", prompt_tokens=400, max_tokens=100)
    tenancy.refuse(a, status=400, reason="security", verdict="block:injection").result()
    (row,) = tenancy.store.usage("acme", 0)
    assert (row.status, row.cost_eur, row.output_tokens) == (400, 0.0, 0)
    b = tenancy.admit(p, "qwen3:8b", prompt_tokens=400, max_tokens=100)  # 500 tokens came back
    assert dict(b.headers())["x-ratelimit-remaining-tokens"] == "500"
    last = list(tenancy.store.audit_records())[-1]
    assert (last.reason, last.verdict) == ("security", "block:injection")


def test_report_formats() -> None:
    from gateway.tenancy.store import UsageRow
    rows = [UsageRow(request_id=str(i), time=1768435200.0 + i, tenant="acme", token_id="t", model=m,
                     input_tokens=10, cached_input_tokens=0, output_tokens=5, reasoning_tokens=0,
                     cost_eur=0.5, status=200, latency_ms=1.0) for i, m in enumerate(["a", "b", "a"])]
    totals = summarize(rows, "model")
    table = render(totals, "table", "model")
    assert table.splitlines()[0].split()[:2] == ["model", "requests"] and len(table.splitlines()) == 3
    parsed = list(csv.reader(io.StringIO(render(totals, "csv", "model"))))
    assert parsed[1][:3] == ["a", "2", "20"]
    assert json.loads(render(totals, "json", "model"))[0]["cost_eur"] == 1.0


def test_csv_cells_a_spreadsheet_would_run_are_quoted() -> None:
    # Tenant names may start with - + @ (and a catalog's model names with anything): a spreadsheet
    # opening the report would evaluate `-2+3` as a formula.
    from gateway.tenancy.store import UsageRow
    rows = [UsageRow(request_id=str(i), time=1768435200.0, tenant=t, token_id="t", model="m", input_tokens=1,
                     cached_input_tokens=0, output_tokens=1, reasoning_tokens=0, cost_eur=0.5, status=200,
                     latency_ms=1.0) for i, t in enumerate(["-2+3", "+33", "@SUM", "=cmd", "acme"])]
    parsed = list(csv.reader(io.StringIO(render(summarize(rows, "tenant"), "csv", "tenant"))))
    assert sorted(r[0] for r in parsed[1:]) == ["'+33", "'-2+3", "'=cmd", "'@SUM", "acme"]
    assert json.loads(render(summarize(rows, "tenant"), "json", "tenant"))[0]["key"] == "+33"  # JSON as stored


def test_finished_request_audit_record(tenancy: Tenancy) -> None:
    secret, record = tenancy.tokens.create("acme", "big")
    p = tenancy.authenticate(f"Bearer {secret}", request_id="req-7", client="192.0.2.1")
    a = tenancy.admit(p, "qwen3:8b", prompt_tokens=12, max_tokens=8, request_id="req-7", client="192.0.2.1")
    tenancy.finish(a, Counts(12, 0, 8, 2), 200, verdict="flag:pii").result()
    (rec,) = tenancy.store.audit_records()
    assert (rec.tenant, rec.token_id, rec.client, rec.model, rec.status, rec.reason) == \
        ("acme", record.id, "192.0.2.1", "qwen3:8b", 200, "ok")
    assert (rec.input_tokens, rec.output_tokens, rec.verdict, rec.request_id) == (12, 8, "flag:pii", "req-7")
    assert rec.prompt is None  # no prompt text without a retention policy
