"""Alert rules firing after `for_s` and resolving, on an injectable clock; events kept and restored."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from gateway.alerts import AlertEvaluator, AlertRule, AlertsSection, EventLog, Recorder, Sources
from gateway.tenancy import FakeClock

T0 = 1_768_435_200.0  # 2026-01-15T00:00:00Z


def evaluator(rules: list[AlertRule], clock: FakeClock, **sources: object) -> AlertEvaluator:
    recorder = sources.pop("recorder", None) or Recorder(clock)
    return AlertEvaluator(AlertsSection(rules=rules), Sources(recorder, **sources), clock)  # type: ignore[arg-type]


def test_p99_ttft_fires_after_for_s_and_resolves() -> None:
    clock = FakeClock(T0)
    rec = Recorder(clock)
    rule = AlertRule(name="slow", kind="ttft", model="qwen3:*", threshold=1.0, window_s=120, for_s=120, min_requests=3)
    ev = evaluator([rule], clock, recorder=rec)

    for _ in range(20):
        rec.observe("acme", "qwen3:8b", 200, 0.2, 0.5)
        rec.observe("acme", "gemma3:4b", 200, 9.0, 9.5)  # slow, but not a model the rule watches
    assert ev.evaluate() == []
    rec.observe("acme", "qwen3:8b", 200, 4.0, 5.0)  # 1 slow of 21: p99 is the slow one
    assert ev.evaluate() == [] and ev.active() == []  # pending: for_s has not passed
    clock.advance(60)
    rec.observe("acme", "qwen3:8b", 200, 4.0, 5.0)
    assert ev.evaluate() == []
    clock.advance(60)
    for _ in range(3):
        rec.observe("acme", "qwen3:8b", 200, 4.0, 5.0)
    [fired] = ev.evaluate()
    assert (fired.state, fired.rule, fired.labels) == ("firing", "slow", {"model": "qwen3:8b"})
    assert fired.value > 3.5 and fired.since == T0 and fired.time == T0 + 120
    assert ev.evaluate() == []  # firing once, not at every tick
    assert [a.id for a in ev.active()] == ["slow|model=qwen3:8b"]

    clock.advance(180)  # the window holds nothing now: no reading resolves it
    [resolved] = ev.evaluate()
    assert resolved.state == "resolved" and resolved.id == fired.id
    assert ev.active() == [] and [e.state for e in ev.history()] == ["firing", "resolved"]


def test_a_breach_shorter_than_for_s_never_fires() -> None:
    clock = FakeClock(T0)
    rec = Recorder(clock)
    rule = AlertRule(name="err", kind="error_rate", threshold=0.1, window_s=60, for_s=120)
    ev = evaluator([rule], clock, recorder=rec)
    rec.observe("a", "m", 500, None, 0.1)
    rec.observe("a", "m", 200, 0.1, 0.1)
    assert ev.evaluate() == []
    clock.advance(60)
    for _ in range(10):
        rec.observe("a", "m", 200, 0.1, 0.1)  # the error rate falls to 0 in the new minute
    assert ev.evaluate() == []
    clock.advance(120)
    rec.observe("a", "m", 500, None, 0.1)  # breaching again: the pending clock starts over
    assert ev.evaluate() == []
    assert ev.history() == []


def test_error_rate_counts_server_errors_only_and_needs_min_requests() -> None:
    clock = FakeClock(T0)
    rec = Recorder(clock)
    ev = evaluator([AlertRule(name="err", kind="error_rate", threshold=0.2, min_requests=5)], clock, recorder=rec)
    for status in (500, 503, 500, 429):
        rec.observe("a", "m", status, None, 0.1)
    assert ev.evaluate() == []  # four requests: below min_requests
    rec.observe("a", "m", 200, 0.1, 0.1)
    [e] = ev.evaluate()
    assert e.state == "firing" and e.value == 3 / 5


def test_host_down_and_kv_usage_read_the_fleet() -> None:
    clock = FakeClock(T0)
    a = SimpleNamespace(name="http://a", healthy=True, report=SimpleNamespace(kv_cache_usage=0.5))
    b = SimpleNamespace(name="http://b", healthy=True, report=None)
    fleet = SimpleNamespace(hosts={"a": a, "b": b})
    rules = [AlertRule(name="down", kind="host_down", for_s=30),
             AlertRule(name="kv", kind="kv_usage", threshold=0.95)]
    ev = evaluator(rules, clock, fleet=fleet)
    assert ev.evaluate() == []
    b.healthy = False
    a.report.kv_cache_usage = 0.97
    [kv] = ev.evaluate()  # host_down waits for_s, kv_usage has none
    assert kv.rule == "kv" and kv.labels == {"host": "http://a"}
    clock.advance(30)
    [down] = ev.evaluate()
    assert down.rule == "down" and down.labels == {"host": "http://b"}
    b.healthy = True
    a.report.kv_cache_usage = 0.9
    assert sorted(e.rule for e in ev.evaluate()) == ["down", "kv"]
    assert ev.active() == []


def test_budget_rule_reads_the_ledger(tenancy) -> None:  # noqa: ANN001 (fixture)
    from gateway.tenancy.store import UsageRow

    clock = tenancy.clock
    tenancy.tokens.create("acme", "small", ["*"])  # 1 EUR a month
    tenancy.tokens.create("beta", "small", ["*"])
    gone = tenancy.tokens.create("gone", "small", ["*"])[1]
    tenancy.tokens.revoke(gone.id)  # a tenant without a live token is not watched

    def spend(tenant: str, eur: float, when: float) -> None:
        tenancy.store.record(UsageRow(request_id="r", time=when, tenant=tenant, token_id="t", model="m",
                                      input_tokens=0, cached_input_tokens=0, output_tokens=0, reasoning_tokens=0,
                                      cost_eur=eur, status=200, latency_ms=1.0), None).result()

    ev = evaluator([AlertRule(name="budget", kind="budget", threshold=0.8)], clock, tenancy=tenancy)
    spend("acme", 0.5, clock.time())
    spend("acme", 5.0, clock.time() - 40 * 86400)  # last month's spending does not count
    spend("gone", 5.0, clock.time())
    assert ev.evaluate() == []
    spend("acme", 0.39, clock.time())
    [e] = ev.evaluate()
    assert e.labels == {"tenant": "acme"} and abs(e.value - 0.89) < 1e-9


def test_history_file_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    host = SimpleNamespace(name="h", healthy=False, report=None)
    fleet = SimpleNamespace(hosts={"h": host})
    path = str(tmp_path / "alerts.jsonl")
    config = AlertsSection(rules=[AlertRule(name="down", kind="host_down")], history_file=path)
    first = AlertEvaluator(config, Sources(Recorder(clock), fleet), clock)  # type: ignore[arg-type]
    assert [e.state for e in first.evaluate()] == ["firing"]
    with open(path, "ab") as f:
        f.write(b'{"torn": ')  # a crash mid-line
    second = AlertEvaluator(config, Sources(Recorder(clock), fleet), clock)  # type: ignore[arg-type]
    assert [e.id for e in second.active()] == ["down|host=h"]
    assert second.evaluate() == []  # still down: not fired twice
    host.healthy = True
    clock.advance(10)
    assert [e.state for e in second.evaluate()] == ["resolved"]
    assert [e.state for e in EventLog(path=path).events()] == ["firing", "resolved"]


def test_active_alerts_outlive_the_bounded_history() -> None:
    clock = FakeClock(T0)
    hosts = {n: SimpleNamespace(name=n, healthy=False, report=None) for n in ("a", "b", "c")}
    config = AlertsSection(rules=[AlertRule(name="down", kind="host_down")], history_size=2)
    ev = AlertEvaluator(config, Sources(Recorder(clock), SimpleNamespace(hosts=hosts)), clock)  # type: ignore[arg-type]
    assert len(ev.evaluate()) == 3
    assert len(ev.history()) == 2  # the oldest event fell out of the history...
    assert sorted(e.labels["host"] for e in ev.active()) == ["a", "b", "c"]  # ...not out of what fires
