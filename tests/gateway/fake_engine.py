"""An OpenAI-compatible engine double for gateway tests: instant, scripted, and observable.

It answers chat and completions with its own name as the text (so a test sees which host served a
request) and embeddings with deterministic vectors (input i: i, i + 0.1, ...), streams `tokens`
events `delay_s` apart, reports its load at /internal/load, and records what it saw: requests,
connections, and streams the client left before their end. Asked for usage
comments (`x-llmaas-usage: comments`, as the gateway asks), it sends `: usage` comments as our
engine does, before each content event, unless `usage_comments` is off (another OpenAI server).
"""
from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

from gateway.http import Request, Response, Router, Server, StreamingResponse, serve


@dataclass
class FakeEngine:
    name: str
    tokens: int = 3
    delay_s: float = 0.0
    status: int = 200  # answer every request with this status (503: overloaded)
    load_status: int = 200  # the health probe's answer
    load_delay_s: float = 0.0  # how long the health probe's answer takes
    fail_after: int | None = None  # cut each stream's connection after this many events
    usage_comments: bool = True  # answer the gateway's request for usage comments
    spaced_json: bool = False  # stream events as json.dumps writes them ("key": value), as some servers do
    page: bytes | None = None  # answer every request 200 with this text/html page instead
    stall_after: int | None = None  # a stream stops after this many events, never ending
    api_key: str | None = None  # answer only requests bearing it (`llmaas engine --api-key`)
    unauthorized: int = 0  # requests refused for want of the key
    prompt_tokens: int = 5
    embeds: bool = True  # False: /v1/embeddings answers 400, as an engine whose model makes none
    cached_tokens: int = 1
    requests: list[dict] = field(default_factory=list)
    abort_tags: list[str] = field(default_factory=list)  # each request's x-llmaas-abort-tag, if any
    aborts: list[str] = field(default_factory=list)  # tags the gateway asked to stop
    clients: set[tuple[str, int] | None] = field(default_factory=set)
    aborted: int = 0
    produced: int = 0  # content events (tokens) yielded, over all streams
    active: int = 0
    server: Server | None = None
    port: int = 0  # 0: any free one, chosen at start
    host: str = "127.0.0.1"

    def router(self) -> Router:
        router = Router()
        router.add("POST", "/v1/chat/completions", self.complete)
        router.add("POST", "/v1/completions", self.complete)
        router.add("POST", "/v1/embeddings", self.embed)
        router.add("GET", "/internal/load", self.load)
        router.add("POST", "/internal/abort/{tag}", self.abort)
        router.add("GET", "/health", self.load)
        return router

    async def start(self) -> int:
        self.server = await serve(self.router(), self.host, self.port)
        self.port = self.server.port
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def accepted(self) -> int:
        """Connections that carried requests (told apart by their client port)."""
        return len(self.clients)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown(0.0)

    def _refused(self, request: Request) -> Response | None:
        if self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        self.unauthorized += 1
        return Response(status=401, body=b'{"error":{"message":"key","type":"invalid_request_error"}}')

    async def load(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        self.clients.add(request.client)
        await asyncio.sleep(self.load_delay_s)
        if self.load_status != 200:
            return Response(status=self.load_status, body=b"{}")
        report = {"num_running": self.active, "num_waiting": 0, "kv_cache_usage": 0.0, "num_free_blocks": 100,
                  "num_blocks": 100, "block_size": 16, "num_pending_tokens": 0}
        return Response(body=msgspec.json.encode(report))

    async def abort(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        self.aborts.append(request.path_params["tag"])
        return Response(body=b'{"aborted":0}')  # a double: the answer still comes when it was to

    def _received(self, request: Request) -> tuple[dict, Response | None]:
        """Records a request: its body, and the answer that replaces the usual one (refused, busy, a page)."""
        if (refused := self._refused(request)) is not None:
            return {}, refused
        body = msgspec.json.decode(request.body)
        self.requests.append(body)
        if "x-llmaas-abort-tag" in request.headers:
            self.abort_tags.append(request.headers["x-llmaas-abort-tag"])
        self.clients.add(request.client)
        if self.status != 200:
            return body, Response(status=self.status, body=b'{"error":{"message":"busy","type":"server_error"}}')
        if self.page is not None:
            return body, Response(body=self.page, content_type="text/html")
        return body, None

    async def embed(self, request: Request) -> Response:
        body, instead = self._received(request)
        if instead is not None:
            return instead
        if not self.embeds:
            error = {"error": {"message": "This model does not serve embeddings.", "type": "invalid_request_error",
                               "param": "model", "code": "embeddings_not_supported"}}
            return Response(status=400, body=msgspec.json.encode(error))
        inputs = body["input"]
        count = 1 if isinstance(inputs, str) or isinstance(inputs[0], int) else len(inputs)
        dimensions = body.get("dimensions") or 4
        data = []
        for i in range(count):
            vector = [i + k / 10 for k in range(dimensions)]
            embedding: list[float] | str = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        usage = {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens}
        return Response(body=msgspec.json.encode({"object": "list", "data": data, "model": body["model"],
                                                  "usage": usage}))

    async def complete(self, request: Request) -> Response | StreamingResponse:
        body, instead = self._received(request)
        if instead is not None:
            return instead
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.tokens,
                 "total_tokens": self.prompt_tokens + self.tokens,
                 "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
                 "completion_tokens_details": {"reasoning_tokens": 0}}
        if not body.get("stream"):
            await asyncio.sleep(self.delay_s * self.tokens)
            message = {"role": "assistant", "content": self.name}
            answer = {"id": "x", "object": "chat.completion", "model": body["model"],
                      "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
            return Response(body=msgspec.json.encode(answer))
        comments = self.usage_comments and request.headers.get("x-llmaas-usage") == "comments"
        return StreamingResponse(self._stream(body, usage, comments))

    async def _stream(self, body: dict, usage: dict, comments: bool) -> AsyncIterator[bytes]:
        def event(payload: object) -> bytes:
            data = json.dumps(payload).encode() if self.spaced_json else msgspec.json.encode(payload)
            return b"data: " + data + b"\n\n"

        def comment(completion: int) -> bytes:
            counts = {"prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                      "completion_tokens": completion, "reasoning_tokens": 0}
            return b": usage " + msgspec.json.encode(counts) + b"\n\n"

        self.active += 1
        finished = False
        try:
            for i in range(self.tokens):
                if self.stall_after is not None and i == self.stall_after:
                    await asyncio.Event().wait()
                if self.fail_after is not None and i == self.fail_after:
                    assert self.server is not None
                    for conn in list(self.server._state.connections):
                        conn.abort()
                    return
                await asyncio.sleep(self.delay_s)
                if comments:
                    yield comment(i + 1)
                delta = {"content": self.name if i == 0 else "."}
                self.produced += 1
                yield event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield event({"object": "chat.completion.chunk", "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            self.active -= 1
            if not finished:
                self.aborted += 1
