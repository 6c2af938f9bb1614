"""A tiny OpenAI-compatible streaming server for the bench tests: chat completions only, HTTP/1.1
keep-alive, chunked SSE, one content chunk per token every `token_delay` seconds.

Model "fail-503" answers 503; an `authorization` header other than the expected key answers 401.
It runs on its own thread and event loop, so that code under test may call asyncio.run itself.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FakeServer:
    def __init__(self, token_delay: float = 0.001, api_key: str | None = None) -> None:
        self.token_delay, self.api_key = token_delay, api_key
        self.requests: list[dict] = []  # the bodies received
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
                self.requests.append(body)
                if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
                    await self._plain(writer, 401)
                elif body.get("model") == "fail-503":
                    await self._plain(writer, 503)
                else:
                    await self._stream(writer, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _plain(writer: asyncio.StreamWriter, status: int) -> None:
        body = json.dumps({"error": {"message": "no", "type": "x"}}).encode()
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                     .encode() + body)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, body: dict) -> None:
        def chunk(obj: object) -> bytes:
            data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            event = b"data: " + data + b"\n\n"
            return b"%x\r\n%s\r\n" % (len(event), event)

        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        prompt_tokens = len(body["messages"][0]["content"].split())
        n = int(body["max_tokens"])
        for _ in range(n):
            await asyncio.sleep(self.token_delay)
            writer.write(chunk({"choices": [{"index": 0, "delta": {"content": " tok"}}]}))
        writer.write(chunk({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                                     "total_tokens": prompt_tokens + n}}))
        writer.write(chunk(b"[DONE]") + b"0\r\n\r\n")
        await writer.drain()


@contextmanager
def fake_server(token_delay: float = 0.001, api_key: str | None = None) -> Iterator[FakeServer]:
    server = FakeServer(token_delay, api_key)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, asyncio.base_events.Server] = {}

    async def start() -> None:
        holder["server"] = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.port = holder["server"].sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert started.wait(5), "fake server did not start"
    try:
        yield server
    finally:
        async def stop() -> None:
            holder["server"].close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
