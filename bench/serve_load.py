"""Serving load generator: streaming chat completions against an OpenAI-compatible server, closed loop.

    python bench/serve_load.py --base-url http://127.0.0.1:8000/v1 --model smollm2:135m \
        --concurrency 1,8,32 --num-requests 64 --output-len 128 [--input-len 64] [--warmup 2] [--json out.json]

For each concurrency level it keeps that many requests in flight until `--num-requests` have been
answered, after `--warmup` requests that are not counted, and prints a Markdown table of TTFT,
inter-token latency, time per output token and end-to-end latency (p50/p90/p99), requests/s and
output tokens/s.

The HTTP client is a minimal HTTP/1.1 one on asyncio streams (keep-alive, chunked bodies, SSE), on
uvloop where installed: it must not be the bottleneck when it shares a small machine with the server
it measures (at 32 in flight it used about 1% of a core), and it needs no dependency beyond msgspec.
The table reports its CPU share (client CPU seconds per wall second) so that a run can show it.

This script is the quick form; `llmaas bench serve` (bench/serve_suite.py) drives the same client
with Poisson arrivals, length distributions, repeats, goodput, energy, JSON, Markdown and plots.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

try:
    import uvloop  # lower client overhead per event than asyncio's own loop
except ImportError:  # not installed on Windows
    uvloop = None

if __name__ == "__main__":  # run as a script: make the `bench` package importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stats import Distribution, RequestRecord, Summary, summarize  # noqa: E402

# Common words that are one token each (with their leading space) in most BPE vocabularies, so that
# a prompt of n words is about n tokens.
WORDS = (
    "the of and to in is was for on that with as by at from his her they this are had not but be one "
    "all were when we there can an which their said if do will each about how up out them then she "
    "many some so these would other into has more two like him see time could no make than first "
    "been its who now people my made over did down only way find use may water long little very after "
    "word called just where most know get through back much go good new write our me man too any day "
    "same right look think also around another came come work three must because does part even place "
    "well such here take why help put different away again off went old number great tell men say small"
).split()


# --- prompts ------------------------------------------------------------------------------------

def prompt_text(tag: str, input_len: int) -> str:
    """About `input_len` tokens, the same for the same tag on every run; tags lead, so no two prompts
    share a prefix that the server's prefix cache could reuse beyond the chat template."""
    rng = random.Random(tag)
    words = rng.choices(WORDS, k=max(input_len - 7, 1))  # the tag and its colon are about 7 tokens
    return f"{tag}: {' '.join(words)}"


def request_tag(concurrency: int, index: int, warmup: bool = False) -> str:
    return f"{'warmup' if warmup else 'run'}-c{concurrency}-{index}"


def chat_body(model: str, prompt: str, output_len: int) -> bytes:
    return json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": output_len,
        "ignore_eos": True,  # every request decodes exactly output_len tokens
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()


# --- the streamed answer ------------------------------------------------------------------------

class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Usage(msgspec.Struct):
    completion_tokens: int
    prompt_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: msgspec.Raw | None = None


_CHUNK_DECODER = msgspec.json.Decoder(_Chunk)
_DONE = b"[DONE]"


class ResponseError(Exception):
    """A request failed; `kind` is what the error tally counts it under."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class SseParser:
    """Incremental server-sent events: feed body bytes in any pieces, get each event's data back."""

    def __init__(self) -> None:
        self._partial = b""  # an unfinished line
        self._data: list[bytes] = []  # the data lines of the event being read

    def feed(self, data: bytes) -> list[bytes]:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            line = line.removesuffix(b"\r")
            if not line:  # a blank line ends the event
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" "))
            # Comments (":...") and other fields (event:, id:, retry:) carry nothing we measure.
        return events


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status code and headers (lower-cased names) of a response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ResponseError("bad_response")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive: chunked, of a known length, or until the connection closes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line.endswith(b"\n"):
                raise asyncio.IncompleteReadError(size_line, None)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readline()).strip():  # trailers, up to the blank line
                    pass
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)  # the CRLF after each chunk
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


async def read_stream(reader: asyncio.StreamReader, headers: dict[str, str], start: float) -> RequestRecord:
    """Times one streamed chat completion from `start` (a perf_counter reading) to its [DONE]."""
    record = RequestRecord()
    parser = SseParser()
    last_content: float | None = None
    done = False
    async for data in read_body(reader, headers):  # to the body's end, so the connection can be reused
        now = time.perf_counter()  # every event in this piece arrived together
        for payload in parser.feed(data):
            if payload == _DONE:
                record.e2e = now - start
                done = True
                continue
            chunk = _CHUNK_DECODER.decode(payload)
            if chunk.error is not None:
                raise ResponseError("stream_error")
            if any(c.delta is not None and c.delta.content for c in chunk.choices):
                if last_content is None:
                    record.ttft = now - start
                else:
                    record.itls.append(now - last_content)
                last_content = now
            if chunk.usage is not None:
                record.output_tokens = chunk.usage.completion_tokens
                record.prompt_tokens = chunk.usage.prompt_tokens
    if not done:
        raise ResponseError("incomplete")
    if record.output_tokens == 0:
        raise ResponseError("no_usage")
    return record


# --- the client ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str  # the chat completions path
    tls: bool
    api_key: str | None = None  # sent as a bearer token

    @classmethod
    def from_base_url(cls, base_url: str, api_key: str | None = None) -> Target:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        tls = url.scheme == "https"
        return cls(url.hostname, url.port or (443 if tls else 80), url.path.rstrip("/") + "/chat/completions", tls,
                   api_key)

    def request(self, body: bytes) -> bytes:
        auth = f"authorization: Bearer {self.api_key}\r\n" if self.api_key else ""
        head = (f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
                f"content-type: application/json\r\naccept: text/event-stream\r\n{auth}"
                f"content-length: {len(body)}\r\n\r\n")
        return head.encode("latin-1") + body


class Connection:
    """One keep-alive connection, opened on first use and again after a failure."""

    def __init__(self, target: Target, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, request: bytes) -> RequestRecord:
        """Never raises for a failed request: the record carries the error's kind instead."""
        start = time.perf_counter()
        try:
            record = await asyncio.wait_for(self._exchange(request, start), self._timeout)
        except ResponseError as exc:
            record = self._failed(exc.kind)
        except asyncio.TimeoutError:
            record = self._failed("timeout")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            record = self._failed("connection")
        record.start = start
        return record

    async def _exchange(self, request: bytes, start: float) -> RequestRecord:
        reused = self._streams is not None
        if self._streams is None:
            ctx = ssl.create_default_context() if self._target.tls else None
            self._streams = await asyncio.open_connection(self._target.host, self._target.port, ssl=ctx)
        reader, writer = self._streams
        writer.write(request)
        try:
            status, headers = await read_head(reader)
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            # The server had closed this kept-alive connection without saying so (llama-server
            # does): not a byte of an answer came, so the request was never served. Every HTTP
            # client sends it again, once, on a fresh connection.
            self.close()
            return await self._exchange(request, start)
        if status != 200:
            raise ResponseError(f"http_{status}")
        record = await read_stream(reader, headers, start)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return record

    def _failed(self, kind: str) -> RequestRecord:
        self.close()  # the connection is in an unknown state mid-response
        return RequestRecord(error=kind)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def closed_loop(target: Target, bodies: Sequence[bytes], concurrency: int,
                      timeout: float) -> list[RequestRecord]:
    """Sends every body with `concurrency` in flight: each worker sends its next as its last ends."""
    requests = iter([target.request(b) for b in bodies])  # encoded before the clock matters
    records: list[RequestRecord] = []

    async def worker() -> None:
        conn = Connection(target, timeout)
        try:
            for request in requests:  # shared: a worker takes the next request not yet taken
                records.append(await conn.send(request))
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))
    return records


# --- levels and report --------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchConfig:
    base_url: str
    model: str
    concurrency: tuple[int, ...]
    num_requests: int
    output_len: int
    input_len: int = 64
    warmup: int = 2
    timeout: float = 600.0  # per request
    api_key: str | None = None  # sent as a bearer token


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    records: list[RequestRecord]
    summary: Summary
    client_cpu: float  # the client's CPU seconds per wall second over the level (1.0 = one core busy)


async def run_level(config: BenchConfig, target: Target, concurrency: int) -> LevelResult:
    def bodies(n: int, warmup: bool) -> list[bytes]:
        return [chat_body(config.model, prompt_text(request_tag(concurrency, i, warmup), config.input_len),
                          config.output_len) for i in range(n)]

    if config.warmup:
        await closed_loop(target, bodies(config.warmup, True), concurrency, config.timeout)
    measured = bodies(config.num_requests, False)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    records = await closed_loop(target, measured, concurrency, config.timeout)
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    return LevelResult(concurrency, records, summarize(records, wall), cpu / wall)


async def bench(config: BenchConfig) -> list[LevelResult]:
    """The load generator's main coroutine: every level in turn."""
    target = Target.from_base_url(config.base_url, config.api_key)
    return [await run_level(config, target, c) for c in config.concurrency]


def _ms(d: Distribution | None) -> str:
    return "-" if d is None else f"{d.p50 * 1e3:.1f} / {d.p90 * 1e3:.1f} / {d.p99 * 1e3:.1f}"


def _s(d: Distribution | None) -> str:
    return "-" if d is None else f"{d.p50:.2f} / {d.p90:.2f} / {d.p99:.2f}"


def markdown_table(results: Sequence[LevelResult]) -> str:
    lines = [
        "| concurrency | ok | errors | input tok | req/s | output tok/s | TTFT ms p50/p90/p99 | ITL ms p50/p90/p99 "
        "| TPOT ms p50/p90/p99 | E2E s p50/p90/p99 | client CPU |",
        "|---:|---:|---|---:|---:|---:|---|---|---|---|---:|",
    ]
    for r in results:
        s = r.summary
        errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "0"
        lines.append(f"| {r.concurrency} | {s.completed} | {errors} | {s.mean_input_tokens:.0f} | {s.request_throughput:.2f} "
                     f"| {s.output_throughput:.1f} | {_ms(s.ttft)} | {_ms(s.itl)} | {_ms(s.tpot)} "
                     f"| {_s(s.e2e)} | {r.client_cpu:.0%} |")
    return "\n".join(lines)


def to_json(config: BenchConfig, results: Sequence[LevelResult]) -> dict:
    return {
        "config": {**asdict(config), "api_key": "set" if config.api_key else None},
        "levels": [{"concurrency": r.concurrency, "client_cpu": r.client_cpu, "summary": asdict(r.summary)}
                   for r in results],
    }


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, str | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="smollm2:135m")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels, each run in turn")
    p.add_argument("--num-requests", type=int, default=64, help="measured requests per level")
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--input-len", type=int, default=64, help="prompt length, in tokens (about)")
    p.add_argument("--warmup", type=int, default=2, help="uncounted requests before each level")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--api-key", default=None, help="sent as a bearer token")
    p.add_argument("--json", help="also write the summaries to this file")
    args = p.parse_args(argv)
    levels = tuple(int(c) for c in args.concurrency.split(","))
    if any(c < 1 for c in levels) or args.num_requests < 1 or args.output_len < 1 or args.input_len < 1:
        p.error("concurrency, --num-requests, --output-len and --input-len must be positive")
    config = BenchConfig(args.base_url, args.model, levels, args.num_requests, args.output_len,
                         args.input_len, args.warmup, args.timeout, args.api_key)
    return config, args.json


def _run(coro: Coroutine[object, object, list[LevelResult]]) -> list[LevelResult]:
    return asyncio.run(coro) if uvloop is None else uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    config, json_path = parse_args(argv)
    results = _run(bench(config))
    print(markdown_table(results))
    if json_path:
        Path(json_path).write_text(json.dumps(to_json(config, results), indent=2))
    return 0 if all(not r.summary.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
