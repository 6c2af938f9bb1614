"""A non-streamed request whose client leaves before the answer: the gateway keeps reading the
engine's answer and bills its exact usage (status 499), instead of an estimate; the host's load
is given back once the answer is in."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import msgspec

from gateway.gateway_server import Gateway
from gateway.http import Request, Response
from gateway.tenancy import Tenancy
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.raw_client import encode_request
from tests.gateway.test_stream_usage import chat, counts, ledger_row, run


@dataclass
class SlowFailingEngine(FakeEngine):
    """Answers 500 after a while: the answer comes, without usage."""

    async def complete(self, request: Request) -> Response:
        self.requests.append(msgspec.json.decode(request.body))
        await asyncio.sleep(0.2)
        return Response(status=500, body=b'{"error":{"message":"boom","type":"server_error"}}')


async def post_and_leave_once_forwarded(port: int, key: str, engine: FakeEngine) -> None:
    """Sends a non-streamed request and drops the connection once the engine has it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_request("POST", "/v1/chat/completions", json.dumps(chat()).encode(), key))
    for _ in range(500):
        if engine.requests:
            break
        await asyncio.sleep(0.01)
    assert engine.requests, "the request never reached the engine"
    writer.transport.abort()


def outstanding(gateway: Gateway) -> int:
    return sum(h.outstanding_tokens for h in gateway.fleet.hosts.values())


def test_a_client_leaving_before_a_whole_answer_pays_the_engines_counts(tmp_path: Path) -> None:
    engine = FakeEngine("a", tokens=4, delay_s=0.05)  # the answer comes 0.2 s after the request

    async def test(port: int, key: str, tenancy: Tenancy, gateway: Gateway) -> None:
        await post_and_leave_once_forwarded(port, key, engine)
        assert counts(await ledger_row(tenancy)) == (5, 1, 4, 0, 499)
        [record] = [a for a in tenancy.store.audit_records() if a.tenant == "t"]
        assert (record.status, record.reason, record.output_tokens) == (499, "aborted", 4)
        assert outstanding(gateway) == 0

    run(tmp_path, engine, test)


def test_an_error_answer_after_the_client_left_bills_nothing_generated(tmp_path: Path) -> None:
    engine = SlowFailingEngine("a")

    async def test(port: int, key: str, tenancy: Tenancy, gateway: Gateway) -> None:
        await post_and_leave_once_forwarded(port, key, engine)
        # No usage in an error body and no byte reached the client: nothing is billed.
        assert counts(await ledger_row(tenancy)) == (0, 0, 0, 0, 499)
        assert outstanding(gateway) == 0

    run(tmp_path, engine, test)
