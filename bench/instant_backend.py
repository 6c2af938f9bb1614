"""A bare httptools server that answers every request at once with a fixed chat completion (or a
fixed stream of it, usage chunk included, when the body asks to stream).

Two roles in the gateway benchmark: the peer (the fastest a Python HTTP server on this machine
answers, measured directly) and the instant engine behind the gateway (so the gateway's own cost is
what the difference shows). Run: `python -m bench.instant_backend --port P`.
"""
from __future__ import annotations

import argparse
import asyncio

import httptools

_BODY = (b'{"id":"chatcmpl-0","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,'
         b'"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,'
         b'"completion_tokens":1,"total_tokens":6}}')
_LOAD = (b'{"num_running":0,"num_waiting":0,"kv_cache_usage":0.0,"num_free_blocks":1,"num_blocks":1,'
         b'"block_size":16,"num_pending_tokens":0}')


_STREAM = (b'data: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,'
           b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
           b'data: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,'
           b'"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
           b'data: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":0,"model":"m","choices":[],'
           b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\n\n'
           b'data: [DONE]\n\n')


def _response(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: %b\r\ncontent-length: %d\r\n\r\n%b" % (content_type, len(body), body)


_ANSWER, _LOAD_ANSWER = _response(_BODY), _response(_LOAD)
_STREAM_ANSWER = _response(_STREAM, b"text/event-stream")


class InstantProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.streams = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url
        self.streams = False

    def on_body(self, body: bytes) -> None:
        # A crude look, enough for a double: the gateway writes compact JSON.
        self.streams = self.streams or b'"stream":true' in body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.url.startswith(b"/internal/load"):
            self.transport.write(_LOAD_ANSWER)
        else:
            self.transport.write(_STREAM_ANSWER if self.streams else _ANSWER)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(InstantProtocol, "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
