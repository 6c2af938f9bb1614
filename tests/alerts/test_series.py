"""The recorder's per-minute series: percentiles within the histogram's 5%, bounded memory."""

from __future__ import annotations

import random

import pytest

from gateway.alerts.recorder import ALL, OVERFLOW, Recorder
from gateway.alerts.series import LogHistogram
from gateway.tenancy import FakeClock


def test_histogram_quantiles_are_within_five_percent() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-2.0, 1.0) for _ in range(5000)]
    h = LogHistogram()
    for v in values:
        h.observe(v)
    values.sort()
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert h.quantile(q) == pytest.approx(exact, rel=0.06)
    assert LogHistogram().quantile(0.99) is None


def test_windows_merge_minutes_and_forget_old_ones() -> None:
    clock = FakeClock(60_000.0 * 60)
    rec = Recorder(clock, retention_minutes=10)
    for _ in range(3):
        rec.observe("acme", "m", 200, 0.1, 0.5, prompt_tokens=4, completion_tokens=10)
    clock.advance(60)
    rec.observe("acme", "m", 503, None, 0.2)
    rec.observe("beta", "m", 200, 2.0, 3.0)
    w = rec.window(120)["m"]
    assert (w.requests, w.server_errors, w.completion_tokens) == (5, 1, 30)
    assert w.ttft.count == 4 and w.e2e.count == 4  # the 503's latency is not an answer's
    assert rec.window(60)["m"].requests == 2  # only the current minute
    assert rec.window(120, tenant="acme")["m"].requests == 4
    per = rec.per_minute(3, tenant="acme")["m"]
    assert [b.requests for b in per] == [0, 3, 1]
    clock.advance(60 * 10)
    rec.observe("acme", "m", 200, 0.1, 0.1)
    series = rec._series[("acme", "m")]
    assert [b.minute for b in series.minutes] == [int(clock.time() // 60)]  # the old minutes are gone
    assert rec.window(3600, model="other*") == {}


def test_series_count_is_capped() -> None:
    rec = Recorder(FakeClock(), max_series=3)
    for i in range(10):
        rec.observe("t", f"invented-{i}", 404, None, 0.0)
    assert len(rec._series) == 5  # three real ones, the admin's overflow and the tenants' overflow
    admin = rec.window(60)
    assert admin[OVERFLOW].requests == 9 and admin["invented-0"].requests == 1
    assert set(rec.window(60, tenant="t")) == {"invented-0", "invented-1"}
    assert rec.window(60, tenant=OVERFLOW) == {}  # a tenant called "other" sees nobody's overflow


def test_names_outside_the_gateways_models_are_other() -> None:
    # A client inventing model names, refused without a key even, gets no series of its own: it can
    # neither grow the recorder nor fill its cap before the real models.
    rec = Recorder(FakeClock(), max_series=4, models={"real"})
    for i in range(100):
        rec.observe("", f"invented-{i}" + "x" * 1000, 401, None, 0.0)
    rec.observe("acme", "real", 200, 0.1, 0.2)
    assert set(rec._series) == {("", OVERFLOW), (ALL, OVERFLOW), ("acme", "real"), (ALL, "real")}
    assert rec.window(60)[OVERFLOW].requests == 100 and rec.window(60, tenant="acme")["real"].requests == 1
