"""The tenant stages on the gateway's native lane (gateway/lane_tenancy.py, csrc/gateway/tenants.h):
the lane serves what they admit -- with the Python path's headers, engine overrides, ledger rows
and audit records -- and hands everything else to the Python server, which refuses it and audits
the refusal. Limits are one table for both paths, so they stay exact whichever path serves.

Each test runs a gateway on the lane and, where answers are compared, a twin on the Python server
alone, with its own database holding the same token records (same pepper)."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from pathlib import Path

import pytest

from gateway.fleet.config import GatewayConfig, ModelEntry, RoutingSection, SecuritySection, ServerSection, TenancySection
from gateway.gateway_server import Gateway
from gateway.http import serve
from gateway.tenancy import SqliteStore, SystemClock, Tenancy
from gateway.tenancy.lane_ledger import parse
from gateway.tenancy.store import TokenRecord
from gateway.tenancy.tokens import TokenService
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.raw_client import RawResponse, get, parse_response

pytest.importorskip("gateway._native", reason="the native lane is not built")

TIERS = """
[tiers.gold]
requests_per_minute = 100000
tokens_per_minute = 100000000
concurrent_requests = 10000
max_tokens_per_request = 4000
monthly_budget_eur = 1000000.0
priority = 3

[tiers.tight]
requests_per_minute = 5
tokens_per_minute = 1000000
concurrent_requests = 100
max_tokens_per_request = 4000
monthly_budget_eur = 1000000.0
priority = 1

[tiers.local]
requests_per_minute = 100000
tokens_per_minute = 100000000
concurrent_requests = 10000
max_tokens_per_request = 4000
monthly_budget_eur = 1000000.0

[prices.models."n"]
input = 2.0

[tokens]
max_age_days = 90
grace_days = 7
"""
# (reset-requests and reset-tokens grow with the microseconds between two answers.)
TIMING_HEADERS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")


def catalog_toml() -> str:
    soon = date.today() + timedelta(days=30)  # inside its 3-month notice: deprecated, still served
    entries = [("m", "2099-12-31"), ("n", "2099-12-31"), ("old", soon.isoformat())]
    return "".join(f'[[models]]\nname = "{name}"\npublisher = "t"\nphase = "production"\ngo_live = 2025-01-01\n'
                   f'end_of_support = {end}\nhosts = []\n\n' for name, end in entries)


def run(test) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(test(), 60))


class Stack:
    def __init__(self, gateway: Gateway, port: int) -> None:
        self.gateway, self.port = gateway, port

    @property
    def tenancy(self) -> Tenancy:
        assert self.gateway.tenancy is not None
        return self.gateway.tenancy

    def sync(self, push: bool = False) -> None:
        """What the lane did, recorded now (it is every 50 ms anyway); `push`: the tokens re-read
        now (they are every second anyway)."""
        lane = self.gateway.lane
        if lane is not None:
            if push:
                lane.tenancy.mark_stale()  # type: ignore[attr-defined]
            lane.sync(record=True)  # type: ignore[attr-defined]


@asynccontextmanager
async def stack(tmp_path: Path, url: str, name: str, native: bool = True,
                require_auth: bool = True) -> AsyncIterator[Stack]:
    tiers, catalog = tmp_path / "tiers.toml", tmp_path / "catalog.toml"
    tiers.write_text(TIERS)
    catalog.write_text(catalog_toml())
    tenancy = Tenancy.open(str(tmp_path / f"{name}.db"), str(tiers), str(catalog))
    config = GatewayConfig(models=[ModelEntry(name=m, hosts=[url]) for m in ("m", "n", "old")],
                           routing=RoutingSection(health_interval_s=0.05),
                           server=ServerSection(native_lane=native),
                           tenancy=TenancySection(enabled=True, require_auth=require_auth),
                           security=SecuritySection(enabled=False))
    gateway = Gateway(config, tenancy=tenancy)
    await gateway.start()
    factory, why = gateway.native_lane()
    if native:
        assert factory is not None, why
    server = await serve(gateway.router(), "127.0.0.1", 0, connections=gateway.metrics.connections, lane=factory)
    try:
        yield Stack(gateway, server.port)
    finally:
        await server.shutdown(1.0)
        await gateway.stop()


@asynccontextmanager
async def engine(**options: object) -> AsyncIterator[FakeEngine]:
    fake = FakeEngine("a", **options)  # type: ignore[arg-type]
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture(autouse=True)
def pepper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMAAS_TOKEN_PEPPER", "the same pepper for both gateways")


def share_token(source: Stack, *others: Stack, tier: str = "gold", models: list[str] | None = None) -> str:
    secret, record = source.tenancy.tokens.create("acme", tier, models)
    for other in others:
        other.tenancy.store.put_token(record).result()
    for s in (source, *others):
        s.sync()
    return secret


async def call(port: int, body: dict, key: str | None = None, extra: str = "",
               path: str = "/v1/chat/completions") -> RawResponse:
    data = json.dumps(body).encode()
    auth = f"authorization: Bearer {key}\r\n" if key is not None else ""
    head = (f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n{auth}{extra}"
            f"connection: close\r\ncontent-length: {len(data)}\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + data)
    try:
        return parse_response(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()


async def raw_call(port: int, headers: bytes, body: bytes) -> RawResponse:
    """A chat request with these header lines, as bytes: any a test needs, valid or not."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n" + headers +
                 b"connection: close\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
    try:
        return parse_response(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()


async def served_key(s: Stack) -> tuple[str, TokenRecord]:
    """A fresh key of the gold tier, once the lane has served a request with it."""
    secret, record = s.tenancy.tokens.create("acme", "gold")
    s.sync()
    assert (await call(s.port, chat(), secret)).status == 200
    return secret, record


def chat(model: str = "m", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}


def handed_off(s: Stack) -> int:
    assert s.gateway.lane is not None
    return s.gateway.lane.handed_off  # type: ignore[attr-defined]


def comparable(r: RawResponse) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in r.headers.items() if k not in TIMING_HEADERS}
    body = r.json()
    for key in ("id", "created"):
        body.pop(key, None)
    return r.status, headers, json.dumps(body, sort_keys=True).encode()


def test_admitted_requests_are_served_on_the_lane_as_python_serves_them(tmp_path: Path) -> None:
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane, \
                stack(tmp_path, fake.url, "python", native=False) as python:
            key = share_token(lane, python)
            for body in (chat(), chat(max_tokens=7), chat("n", n=2), chat(max_completion_tokens=9, max_tokens=3)):
                a, b = await call(python.port, body, key), await call(lane.port, body, key)
                assert a.status == 200 and comparable(a) == comparable(b)
                assert b.headers["x-ratelimit-limit-requests"] == "100000"
                # The engine saw the same overrides from both: the tier's priority, and its cap
                # when the client set no max.
                sent_python, sent_lane = fake.requests[-2], fake.requests[-1]
                assert sent_python == sent_lane and sent_lane["priority"] == -3
            # A ceiling, not a max_tokens: one past the model's context would be refused.
            assert fake.requests[0]["max_tokens_cap"] == 4000 - (len("hello there") // 4 + 8)
            assert "max_tokens" not in fake.requests[0]
            # Completions without max_tokens generate OpenAI's 16 tokens: no ceiling to send, and
            # the limits reserve the prompt and those 16.
            completion = {"model": "m", "prompt": "hello there"}
            a = await call(python.port, completion, key, path="/v1/completions")
            b = await call(lane.port, completion, key, path="/v1/completions")
            assert a.status == b.status == 200 and comparable(a) == comparable(b)
            assert fake.requests[-2] == fake.requests[-1] == {**completion, "priority": -3}
            assert handed_off(lane) == 0
    run(test)


def test_ledger_rows_and_audit_records_of_lane_requests(tmp_path: Path) -> None:
    async def test() -> None:
        async with engine(tokens=4, prompt_tokens=11, cached_tokens=3) as fake, \
                stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane)
            for i in range(20):
                assert (await call(lane.port, chat("n" if i % 2 else "m", max_tokens=5), key,
                                   extra=f"x-request-id: r{i}\r\n")).status == 200
            assert handed_off(lane) == 0
            lane.sync()
            tenancy = lane.tenancy
            rows = sorted(tenancy.store.usage("acme", since=0.0), key=lambda r: int(r.request_id[1:]))
            assert [r.request_id for r in rows] == [f"r{i}" for i in range(20)]
            for i, row in enumerate(rows):
                assert (row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens) == (11, 3, 4, 0)
                price_in = 2.0 if i % 2 else 0.9
                assert row.cost_eur == pytest.approx((8 * price_in + 3 * 0.9 + 4 * 4.0) / 1e6)
                assert row.status == 200 and row.model == ("n" if i % 2 else "m") and row.latency_ms > 0
            records = [r for r in tenancy.store.audit_records() if r.request_id.startswith("r")]
            assert len(records) == 20 and all(r.reason == "ok" and r.client == "127.0.0.1" for r in records)
            assert tenancy.audit.verify() == []
            # The metrics count them under their tier, with what they cost.
            metrics = (await get(lane.port, "/metrics")).content.decode()
            assert 'llmaas_gateway_requests_total{code="",model="m",status="200",tier="gold"} 10.0' in metrics
            billed = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                         if line.startswith("llmaas_gateway_cost_eur_total{"))
            assert billed == pytest.approx(sum(r.cost_eur for r in rows))
    run(test)


def test_refusals_are_handed_to_python_and_audited(tmp_path: Path) -> None:
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane, \
                stack(tmp_path, fake.url, "python", native=False) as python:
            key = share_token(lane, python, models=["m"])
            cases = [(chat(), None, 401), (chat(), key + "x", 401), (chat(), "llmaas-short_x", 401),
                     (chat("n"), key, 403), (chat("nope"), key, 404), (chat(max_tokens=5000), key, 400)]
            for body, presented, status in cases:
                a, b = await call(python.port, body, presented), await call(lane.port, body, presented)
                assert a.status == b.status == status, (body, presented, b.content)
                assert comparable(a) == comparable(b)
            assert handed_off(lane) == len(cases)
            metrics = (await get(lane.port, "/metrics")).content.decode()  # itself handed over
            assert f"llmaas_gateway_lane_handoffs_total {len(cases) + 1}.0" in metrics
            lane.sync()
            reasons = [(r.status, r.reason) for r in lane.tenancy.store.audit_records()]
            assert reasons == [(401, "auth")] * 3 + [(403, "permission"), (404, "lifecycle"), (400, "limit")]
    run(test)


def test_embeddings_are_handed_to_python_which_serves_and_bills_them(tmp_path: Path) -> None:
    # The lane serves chat and completions only; an embeddings request takes the Python path whole.
    async def test() -> None:
        async with engine(prompt_tokens=7) as fake, stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane)
            answer = await call(lane.port, {"model": "n", "input": ["hello", "there"]}, key, path="/v1/embeddings")
            assert answer.status == 200, answer.content
            body = answer.json()
            assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"] == {"prompt_tokens": 7,
                                                                                   "total_tokens": 7}
            assert answer.headers["x-ratelimit-limit-requests"] == "100000"
            assert fake.requests[-1] == {"model": "n", "input": ["hello", "there"], "priority": -3}
            assert handed_off(lane) == 1
            assert (await call(lane.port, chat(), key)).status == 200 and handed_off(lane) == 1
            lane.sync()
            row = next(r for r in lane.tenancy.store.usage("acme", since=0.0) if r.model == "n")
            assert (row.status, row.input_tokens, row.output_tokens) == (200, 7, 0)
            assert row.cost_eur == pytest.approx(7 * 2.0 / 1e6)
    run(test)


def test_rate_limits_hold_exactly_across_both_paths(tmp_path: Path) -> None:
    async def test() -> None:
        async with engine(delay_s=0.0) as fake, stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane, tier="tight")  # 5 requests a minute
            answers = await asyncio.gather(*(call(lane.port, chat(), key) for _ in range(12)))
            statuses = sorted(a.status for a in answers)
            assert statuses == [200] * 5 + [429] * 7
            refused = next(a for a in answers if a.status == 429)
            assert refused.headers["x-ratelimit-remaining-requests"] == "0" and int(refused.headers["retry-after"]) >= 1
            # A stream goes through the Python server: the same bucket, now empty.
            stream = await call(lane.port, chat(stream=True), key)
            assert stream.status == 429
    run(test)


def test_revocation_reaches_the_lane_at_once(tmp_path: Path) -> None:
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            secret, record = await served_key(lane)
            lane.tenancy.tokens.revoke(record.id)
            lane.sync()
            answer = await call(lane.port, chat(), secret)
            assert answer.status == 401 and b"revoked" in answer.content
    run(test)


def test_deprecated_models_and_rotation_are_pythons(tmp_path: Path) -> None:
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane)
            old = await call(lane.port, chat("old"), key)
            assert old.status == 200 and "deprecation" in old.headers and "sunset" in old.headers
            assert "deprecated" in old.json()["warning"]
            assert handed_off(lane) == 1
            # A token past its maximum age: Python rotates it and hands out the new secret.
            secret, record = lane.tenancy.tokens.create("acme", "gold")
            record.created_at -= 91 * 86400
            lane.tenancy.store.put_token(record).result()  # behind the token service's back
            lane.sync(push=True)
            rotated = await call(lane.port, chat(), secret)
            assert rotated.status == 200 and rotated.headers["x-llmaas-new-api-key"].startswith("llmaas-")
            lane.sync()
            again = await call(lane.port, chat(), secret)  # in its grace period: served, with the notice
            assert again.status == 200 and again.headers["x-llmaas-api-key-rotated"]
    run(test)


def test_no_auth_serves_the_local_tenant_on_the_lane(tmp_path: Path) -> None:
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane", require_auth=False) as lane:
            assert (await call(lane.port, chat())).status == 200
            assert handed_off(lane) == 0
            lane.sync()
            assert [r.tenant for r in lane.tenancy.store.usage(None, since=0.0)] == ["local"]
    run(test)


def test_a_killed_gateways_lane_journal_is_recorded_at_the_next_open(tmp_path: Path) -> None:
    """Entries the lane journaled but no tick recorded (the gateway killed in between) are recorded
    by the next process to open the database, once."""
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane)
            lane.gateway.lane._tenancy = None  # type: ignore[union-attr]  # as if no tick ran again
            for i in range(3):
                assert (await call(lane.port, chat(), key, extra=f"x-request-id: k{i}\r\n")).status == 200
            path = lane.tenancy.lane_journal_path
            journaled = [e.request_id for n in (0, 1) for e in parse(Path(f"{path}-{n}").read_bytes())]
            assert journaled == ["k0", "k1", "k2"]
            assert not [r for r in lane.tenancy.store.usage("acme", since=0.0) if r.request_id.startswith("k")]
            db = lane.tenancy.store.path  # type: ignore[attr-defined]
        cli = SqliteStore(db)  # the CLI's way in, with no gateway running: it records them
        try:
            assert sorted(r.request_id for r in cli.usage("acme", since=0.0)) == ["k0", "k1", "k2"]
        finally:
            cli.close()
        reopened = Tenancy.open(db, str(tmp_path / "tiers.toml"), str(tmp_path / "catalog.toml"))
        try:  # and not again
            assert sorted(r.request_id for r in reopened.store.usage("acme", since=0.0)) == ["k0", "k1", "k2"]
            assert reopened.audit.verify() == []
        finally:
            reopened.close()
    run(test)


def test_request_ids_of_any_bytes_are_recorded_as_the_python_path_records_them(tmp_path: Path) -> None:
    # The lane kept an x-request-id's bytes as they came: one that was not UTF-8 made the usage
    # and audit tables unreadable to Python (usage, verify, history raised), and the replay of its
    # journal stopped at that entry, losing those after it. Python reads header bytes as latin-1.
    ids = [b'q"uote \\ and\ttab', "\u00e9\u4e2d".encode(), b"\xff\xfe not utf-8", b"after"]

    async def raw(port: int, key: str, request_id: bytes) -> int:
        headers = b"authorization: Bearer " + key.encode() + b"\r\nx-request-id: " + request_id + b"\r\n"
        return (await raw_call(port, headers, json.dumps(chat()).encode())).status

    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane, \
                stack(tmp_path, fake.url, "python", native=False) as python:
            key = share_token(lane, python)
            for request_id in ids:
                assert [await raw(s.port, key, request_id) for s in (python, lane)] == [200, 200]
            assert handed_off(lane) == 0
            lane.sync()
            recorded = [[r.request_id for r in s.tenancy.store.usage("acme", since=0.0)] for s in (python, lane)]
            assert recorded[0] == recorded[1] == [i.decode("latin-1") for i in ids]
            assert lane.tenancy.audit.verify() == []
            lane.gateway.lane._tenancy = None  # type: ignore[union-attr]  # as if no tick ran again
            for request_id in ids:
                assert await raw(lane.port, key, request_id) == 200
            path = lane.tenancy.lane_journal_path
            journaled = [e.request_id for n in (0, 1) for e in parse(Path(f"{path}-{n}").read_bytes())]
            assert journaled == [i.decode("latin-1") for i in ids]  # what the next start replays
    run(test)


def test_the_scheme_and_header_name_in_any_case(tmp_path: Path) -> None:
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane)
            for header in (f"Authorization: BEARER {key}", f"AUTHORIZATION: bEaReR   {key}  "):
                data = json.dumps(chat()).encode()
                head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\n{header}\r\nconnection: close\r\n"
                        f"content-length: {len(data)}\r\n\r\n")
                reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
                writer.write(head.encode() + data)
                answer = parse_response(await asyncio.wait_for(reader.read(), 10))
                writer.close()
                assert answer.status == 200
            assert handed_off(lane) == 0
            # Two Authorization headers: which one counts is Python's call (it answers).
            doubled = await call(lane.port, chat(), key, extra=f"authorization: Bearer {key}\r\n")
            assert handed_off(lane) == 1 and doubled.status in (200, 401)
    run(test)


def test_a_revocation_by_another_process_reaches_the_lane_within_a_second(tmp_path: Path) -> None:
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            secret, record = await served_key(lane)
            # The CLI's way (cli_tokens.py): its own store on the database, no word to the gateway.
            cli = SqliteStore(lane.tenancy.store.path)  # type: ignore[attr-defined]
            try:
                TokenService(cli, SystemClock(), lane.tenancy.config.token_policy).revoke(record.id)
            finally:
                cli.close()
            deadline = time.monotonic() + 3
            while (answer := await call(lane.port, chat(), secret)).status == 200:
                assert time.monotonic() < deadline, "the lane still serves a revoked key"
                await asyncio.sleep(0.05)
            assert answer.status == 401 and b"revoked" in answer.content
    run(test)


def test_a_revocation_reaches_the_lane_within_a_second_while_another_writer_holds_the_database(
        tmp_path: Path) -> None:
    # The tick pushed the tokens only once its ledger commit had given up on the lock (the lane's
    # 2 s busy timeout): a revoked key was served for two seconds, not one.
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            secret, record = await served_key(lane)
            path = lane.tenancy.store.path  # type: ignore[attr-defined]
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (time.time(), record.id))
            revoked = time.monotonic()
            other.execute("BEGIN IMMEDIATE")  # and holds the database from then on
            try:
                while (await call(lane.port, chat(), secret)).status == 200:  # each one a row to commit
                    assert time.monotonic() - revoked < 1.5, "the lane still serves a revoked key"
                    await asyncio.sleep(0.02)
            finally:
                other.execute("ROLLBACK")
                other.close()
    run(test)


def test_a_503_that_no_engine_answered_bills_nothing_on_either_path(tmp_path: Path) -> None:
    # The lane answers it itself (each host tried once): as the Python path, no tokens, no cost,
    # and the tokens it reserved given back.
    async def test() -> None:
        async with engine(status=503) as fake, stack(tmp_path, fake.url, "lane") as lane, \
                stack(tmp_path, fake.url, "python", native=False) as python:
            key = share_token(lane, python)
            answers = [await call(s.port, chat(max_tokens=50), key) for s in (python, lane)]
            assert [a.status for a in answers] == [503, 503] and handed_off(lane) == 0
            assert answers[0].json() == answers[1].json()
            for s in (python, lane):
                s.sync()
                [row] = s.tenancy.store.usage("acme", since=0.0)
                assert (row.status, row.input_tokens, row.output_tokens, row.cost_eur) == (503, 0, 0, 0.0)
            ok = [await call(s.port, chat(max_tokens=1), key) for s in (python, lane)]
            assert ok[0].headers["x-ratelimit-remaining-tokens"] == ok[1].headers["x-ratelimit-remaining-tokens"]
    run(test)


@pytest.mark.parametrize("field,value", [("max_tokens", -1000000), ("max_completion_tokens", 0), ("n", 0)])
def test_sizes_below_one_are_refused_before_anything_is_reserved(tmp_path: Path, field: str, value: int) -> None:
    # A negative max_tokens used to reserve negative tokens: the tenant's limits fell into debt for hours.
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane, tier="tight")
            refused = await call(lane.port, chat(**{field: value}), key)
            assert refused.status == 400 and refused.json()["error"]["param"] == field
            served = await call(lane.port, chat(max_tokens=5), key)
            assert served.status == 200 and int(served.headers["x-ratelimit-remaining-tokens"]) < 1000000
            assert not any(r.get(field) == value for r in fake.requests)
    run(test)


@pytest.mark.parametrize("native", [True, False])
def test_a_request_cut_by_a_stop_past_its_deadline_keeps_its_row(tmp_path: Path, native: bool) -> None:
    # The stop's deadline passes while the engine still works on a whole answer: the request is
    # billed and audited as one whose client left (it used to leave no row at all).
    async def test() -> None:
        async with engine(delay_s=20.0, tokens=1) as fake:
            async with stack(tmp_path, fake.url, "db", native=native) as s:
                key = share_token(s)
                asked = asyncio.ensure_future(call(s.port, chat(), key))
                while not fake.requests:
                    await asyncio.sleep(0.02)
            with pytest.raises(Exception):
                await asked  # cut: no answer
        store = SqliteStore(tmp_path / "db.db")
        try:
            [row] = store.usage("acme", since=0.0)
            assert row.status == 499 and row.output_tokens == 0
            assert [r.reason for r in store.audit_records() if r.tenant == "acme"] == ["aborted"]
        finally:
            store.close()
    run(test)


def test_the_lane_records_its_requests_in_an_audit_chain_of_its_own(tmp_path: Path) -> None:
    # The lane's native ledger (csrc/gateway/lane_ledger.h) chains its records apart from the
    # Python path's: seqs from 1, each linked to the one before, its head in meta. `verify` checks
    # them with the Python hash, so an edit or a deletion shows up in that chain, where it was made.
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane, models=["m"])
            assert (await call(lane.port, chat("n"), key)).status == 403  # Python's chain
            for i in range(12):
                assert (await call(lane.port, chat(), key, extra=f"x-request-id: c{i}\r\n")).status == 200
            lane.sync()
            tenancy = lane.tenancy
            chain = lane.gateway.lane.tenancy.chain  # type: ignore[union-attr]
            assert chain == f"{tenancy.audit.chain}-lane"
            records = [r for r in tenancy.store.audit_records() if r.chain == chain]
            assert [r.seq for r in records] == list(range(1, 13))
            assert [r.request_id for r in records] == [f"c{i}" for i in range(12)]
            assert [r.prev_hash for r in records] == [""] + [r.hash for r in records[:-1]]
            assert tenancy.store.audit_heads()[chain] == (12, records[-1].hash)
            assert [(r.status, r.reason) for r in tenancy.store.audit_records() if r.chain != chain] == \
                [(403, "permission")]
            assert tenancy.audit.verify() == []
            db = sqlite3.connect(tenancy.store.path)  # type: ignore[attr-defined]
            with db:
                db.execute("UPDATE audit SET output_tokens = 99 WHERE chain = ? AND seq = 5", (chain,))
                db.execute("DELETE FROM audit WHERE chain = ? AND seq = 9", (chain,))
            db.close()
            problems = [(p.chain, p.seq, p.kind) for p in tenancy.audit.verify()]
            assert problems == [(chain, 5, "edited"), (chain, 9, "deleted")]
    run(test)


def test_a_commit_that_fails_loses_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Another writer holds the database past the lane's busy timeout: the ticks' commits fail and
    # record nothing (said once), the entries stay journaled, the event loop keeps serving (the
    # commit waits on a worker thread), and once the lock goes each is recorded once, in order.
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane)
            holder = sqlite3.connect(lane.tenancy.store.path, isolation_level=None)  # type: ignore[attr-defined]
            holder.execute("BEGIN IMMEDIATE")
            for i in range(3):
                assert (await call(lane.port, chat(), key, extra=f"x-request-id: f{i}\r\n")).status == 200
            started = time.monotonic()
            while not any("wait in its journal" in r.message for r in caplog.records):
                assert time.monotonic() - started < 10
                assert (await get(lane.port, "/health")).status == 200  # the Python server answers meanwhile
                await asyncio.sleep(0.05)
            assert (await call(lane.port, chat(), key, extra="x-request-id: f3\r\n")).status == 200
            holder.execute("ROLLBACK")
            holder.close()
            while not any("committed again" in r.message for r in caplog.records):
                assert time.monotonic() - started < 20
                await asyncio.sleep(0.05)
            lane.sync()  # f3 went to the journal's other file: the next commit takes it
            rows = lane.tenancy.store.usage("acme", since=0.0)
            assert [r.request_id for r in rows] == ["f0", "f1", "f2", "f3"]
            assert [r.seq for r in lane.tenancy.store.audit_records() if r.request_id.startswith("f")] == [1, 2, 3, 4]
            assert lane.tenancy.audit.verify() == []
            assert sum("wait in its journal" in r.message for r in caplog.records) == 1
    run(test)


def test_a_metrics_scrape_does_not_wait_on_a_locked_database(tmp_path: Path) -> None:
    # A scrape brings the lane's finished requests in (the gateway's metrics refresh): it committed
    # the lane's ledger too, on the event loop, which stood still ~4 s while another writer held
    # the database (the tick's commit in flight, then its own, each up to the busy timeout).
    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane:
            key = share_token(lane)
            holder = sqlite3.connect(lane.tenancy.store.path, isolation_level=None)  # type: ignore[attr-defined]
            holder.execute("BEGIN IMMEDIATE")
            try:
                for _ in range(3):
                    assert (await call(lane.port, chat(), key)).status == 200
                await asyncio.sleep(0.1)  # a tick's commit waits on the lock now
                started = time.monotonic()
                assert (await get(lane.port, "/metrics")).status == 200
                assert time.monotonic() - started < 0.5
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            lane.sync()
            assert len(lane.tenancy.store.usage("acme", since=0.0)) == 3
    run(test)


def test_only_http_whitespace_around_a_key_is_ignored_on_both_paths(tmp_path: Path) -> None:
    # A trailing NBSP (0xA0, which str.strip() removes) made a different key on the lane (401) and
    # the same key on the Python path (200).
    async def raw(port: int, authorization: bytes) -> int:
        return (await raw_call(port, b"authorization: " + authorization + b"\r\n", json.dumps(chat()).encode())).status

    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane, \
                stack(tmp_path, fake.url, "python", native=False) as python:
            key = share_token(lane, python).encode()
            for value, status in ((b"Bearer " + key + b" \t", 200), (b"bearer \t" + key, 200),
                                  (b"Bearer " + key + b"\xa0", 401), (b"Bearer \x0b" + key, 400)):  # VT: no header byte
                assert [await raw(s.port, value) for s in (python, lane)] == [status, status], value
    run(test)


def test_an_unreadable_body_is_answered_after_the_key_is_checked(tmp_path: Path) -> None:
    # As OpenAI: a bad key is a 401 whatever the body. A known caller's 400 carries its
    # x-ratelimit-* headers (as every answer to a known tenant does), is audited, and takes nothing
    # from its limits. Both paths alike (the lane hands these bodies over).
    async def raw(port: int, body: bytes, key: str | None) -> RawResponse:
        auth = f"authorization: Bearer {key}\r\n".encode() if key else b""
        return await raw_call(port, auth + b"x-request-id: bad-body\r\n", body)

    async def test() -> None:
        async with engine() as fake, stack(tmp_path, fake.url, "lane") as lane, \
                stack(tmp_path, fake.url, "python", native=False) as python:
            key = share_token(lane, python, tier="tight")
            for body in (b"{bad", b'{"model": 5}', json.dumps(chat(max_tokens=0)).encode()):
                for s in (python, lane):
                    assert (await raw(s.port, body, None)).status == 401
                    assert (await raw(s.port, body, key + "x")).status == 401
                    refused = await raw(s.port, body, key)
                    assert refused.status == 400, (body, refused.content)
                    assert refused.headers["x-ratelimit-limit-requests"] == "5"
                    assert refused.headers["x-ratelimit-remaining-requests"] == "5"  # nothing taken
            for s in (python, lane):
                s.sync()
                records = [(r.status, r.reason, r.tenant) for r in s.tenancy.store.audit_records()
                           if r.request_id == "bad-body"]
                assert records == [(401, "auth", None), (401, "auth", None), (400, "invalid_request", "acme")] * 3
                assert (await call(s.port, chat(), key)).headers["x-ratelimit-remaining-requests"] == "4"
    run(test)
