"""The load generator's statistics on known inputs, and its SSE client on canned byte streams."""
from __future__ import annotations

import asyncio
import json

import pytest

from bench.serve_load import SseParser, read_head, read_stream
from bench.stats import RequestRecord, percentile, summarize


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)  # rank 1.5
    assert percentile(values, 90) == pytest.approx(3.7)  # rank 2.7
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_percentile_of_one_value_is_that_value() -> None:
    assert [percentile([7.5], p) for p in (0, 50, 99, 100)] == [7.5] * 4


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_summary_arithmetic() -> None:
    records = [
        RequestRecord(ttft=0.1, e2e=1.1, itls=[0.5, 0.5], output_tokens=11, prompt_tokens=60),
        RequestRecord(ttft=0.3, e2e=2.3, itls=[1.0], output_tokens=5, prompt_tokens=70),
        RequestRecord(error="http_503"),
        RequestRecord(error="timeout"),
        RequestRecord(error="http_503"),
    ]
    s = summarize(records, duration=4.0)
    assert s.completed == 2
    assert s.errors == {"http_503": 2, "timeout": 1}
    assert s.request_throughput == pytest.approx(0.5)
    assert s.output_throughput == pytest.approx(16 / 4.0)
    assert s.mean_input_tokens == pytest.approx(65)
    assert records[0].tpot == pytest.approx(1.0 / 10)
    assert records[1].tpot == pytest.approx(2.0 / 4)
    assert s.tpot is not None and s.tpot.p50 == pytest.approx((0.1 + 0.5) / 2)
    assert s.ttft is not None and s.ttft.mean == pytest.approx(0.2)
    assert s.itl is not None and s.itl.p50 == pytest.approx(0.5)  # all three gaps, pooled
    assert s.e2e is not None and s.e2e.p99 == pytest.approx(1.1 + 1.2 * 0.99)


def test_summary_when_everything_failed() -> None:
    s = summarize([RequestRecord(error="connection")], duration=1.0)
    assert (s.completed, s.ttft, s.tpot, s.output_throughput) == (0, None, None, 0.0)
    assert RequestRecord(ttft=0.1, e2e=0.1, output_tokens=1).tpot is None  # no second token to time
    with pytest.raises(ValueError):
        summarize([], duration=0.0)


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _content(text: str) -> bytes:
    return _event({"choices": [{"index": 0, "delta": {"content": text}}]})


EVENTS = [
    _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
    _content("Hello"),
    _content(" wor") + _content("ld"),  # two events in one chunk
    _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
    _event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}),
    b"data: [DONE]\n\n",
]


def _chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            + _chunked(EVENTS[:2] + [EVENTS[2][:7], EVENTS[2][7:] + EVENTS[3]] + EVENTS[4:]))


async def _read(pieces: list[bytes]) -> tuple[RequestRecord, bytes]:
    """Feeds the pieces one at a time while the client reads; returns its record and what it left."""
    reader = asyncio.StreamReader()

    async def feed() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_data(b"NEXT")  # the next response on a keep-alive connection
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    status, headers = await read_head(reader)
    assert status == 200
    record = await read_stream(reader, headers, start=0.0)
    await feeder
    return record, await reader.read()


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 64, len(RESPONSE)])
def test_client_reads_a_chunked_stream_split_anywhere(step: int) -> None:
    pieces = [RESPONSE[i:i + step] for i in range(0, len(RESPONSE), step)]
    record, rest = asyncio.run(_read(pieces))
    assert record.error is None
    assert (record.output_tokens, record.prompt_tokens) == (4, 9)
    assert len(record.itls) == 2  # three content chunks: "Hello", " wor", "ld"
    assert 0 < record.ttft <= record.e2e
    assert rest == b"NEXT"  # it read the body to its end and no further


def test_client_reports_a_stream_cut_before_done() -> None:
    cut = RESPONSE[:RESPONSE.index(b"data: [DONE]")]
    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(_read([cut[:-3]]))


def test_sse_parser_joins_lines_and_skips_comments() -> None:
    parser = SseParser()
    assert parser.feed(b": keep-alive\r\n\r\ndata: a\r") == []
    assert parser.feed(b"\ndata:b\n") == []
    assert parser.feed(b"\nevent: x\ndata: [DONE]\n\n") == [b"a\nb", b"[DONE]"]


def test_distribution_max_and_goodput_under_an_objective() -> None:
    from bench.stats import Objective

    records = [
        RequestRecord(ttft=0.1, e2e=1.0, output_tokens=10),  # tpot 0.1
        RequestRecord(ttft=0.6, e2e=1.5, output_tokens=10),  # TTFT over 0.5
        RequestRecord(ttft=0.2, e2e=3.8, output_tokens=10),  # tpot 0.4
        RequestRecord(error="timeout"),  # never good
    ]
    s = summarize(records, duration=2.0)
    assert s.goodput is None  # no objective, no goodput
    assert s.ttft is not None and s.ttft.max == 0.6 and s.e2e is not None and s.e2e.max == 3.8
    assert summarize(records, 2.0, Objective(ttft=0.5)).goodput == pytest.approx(1.0)  # 2 good / 2 s
    assert summarize(records, 2.0, Objective(ttft=0.5, tpot=0.2)).goodput == pytest.approx(0.5)
    assert summarize(records, 2.0, Objective(e2e=10.0)).goodput == pytest.approx(1.5)
    assert summarize(records, 2.0, Objective()).goodput is None


def test_content_times_rebuild_each_chunk_from_the_start() -> None:
    record = RequestRecord(start=10.0, ttft=0.5, itls=[0.25, 0.25], output_tokens=3)
    assert record.content_times() == [10.5, 10.75, 11.0]
    assert RequestRecord(start=1.0, error="timeout").content_times() == []


def test_client_resends_once_when_a_kept_alive_connection_was_closed() -> None:
    from bench.serve_load import Connection, Target

    answer = RESPONSE  # a whole streamed answer, without "connection: close"
    accepted = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()  # closes after one answer, as a server whose keep-alive ran out

    async def run() -> list:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = Connection(Target("127.0.0.1", port, "/v1/chat/completions", False), timeout=5)
        request = Target("127.0.0.1", port, "/v1/chat/completions", False).request(b"{}")
        records = [await conn.send(request) for _ in range(3)]
        conn.close()
        server.close()
        return records

    records = asyncio.run(run())
    assert [r.error for r in records] == [None, None, None]
    assert len(accepted) == 3  # each resend went on a new connection
