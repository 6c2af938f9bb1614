"""Firing and resolved events POSTed as JSON to a webhook (a local HTTP server), retried on failure."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from gateway.alerts import AlertEvaluator, AlertRule, AlertsSection, Recorder, Sources
from gateway.tenancy import FakeClock


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.headers: list[str] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(502)
                else:
                    receiver.bodies.append(json.loads(body))
                    receiver.headers.append(self.headers["content-type"])
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    r = Receiver(getattr(request, "param", 0))
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
    thread.join()


@pytest.mark.parametrize("receiver", [0, 1], indirect=True, ids=["first-try", "after-a-502"])
def test_events_reach_the_webhook(receiver: Receiver) -> None:
    clock = FakeClock(1_768_435_200.0)
    host = SimpleNamespace(name="http://gpu-1:8001", healthy=False, report=None)
    config = AlertsSection(rules=[AlertRule(name="down", kind="host_down", severity="critical")],
                           webhook=receiver.url, interval_s=0.01)

    async def main() -> AlertEvaluator:
        fleet = SimpleNamespace(hosts={"h": host})
        ev = AlertEvaluator(config, Sources(Recorder(clock), fleet), clock)  # type: ignore[arg-type]
        ev.webhook.backoff_s = 0.01  # type: ignore[union-attr]
        ev.start()  # the timer, as the gateway runs it
        for _ in range(200):
            await asyncio.sleep(0.01)
            if ev.active():
                break
        host.healthy = True
        clock.advance(60)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not ev.active():
                break
        await ev.stop()  # waits for the deliveries in flight
        return ev

    ev = asyncio.run(asyncio.wait_for(main(), 20))
    assert [(b["state"], b["rule"], b["labels"]) for b in receiver.bodies] == [
        ("firing", "down", {"host": "http://gpu-1:8001"}), ("resolved", "down", {"host": "http://gpu-1:8001"})]
    assert receiver.bodies[0]["severity"] == "critical" and receiver.bodies[1]["time"] == 1_768_435_260.0
    assert receiver.headers == ["application/json"] * 2
    assert ev.webhook is not None and (ev.webhook.delivered, ev.webhook.failed) == (2, 0)


def test_an_unreachable_webhook_is_counted_not_raised() -> None:
    clock = FakeClock()
    host = SimpleNamespace(name="h", healthy=False, report=None)
    config = AlertsSection(rules=[AlertRule(name="down", kind="host_down")], webhook="http://127.0.0.1:9/x",
                           webhook_timeout_s=1.0)

    async def main() -> AlertEvaluator:
        fleet = SimpleNamespace(hosts={"h": host})
        ev = AlertEvaluator(config, Sources(Recorder(clock), fleet), clock)  # type: ignore[arg-type]
        ev.webhook.backoff_s = 0.001  # type: ignore[union-attr]
        assert len(ev.evaluate()) == 1
        await ev.drain()
        return ev

    ev = asyncio.run(asyncio.wait_for(main(), 20))
    assert ev.webhook is not None and (ev.webhook.delivered, ev.webhook.failed) == (0, 1)
    assert [e.state for e in ev.history()] == ["firing"]  # recorded all the same
