"""Flow control: a client that reads slowly holds its stream back instead of growing server memory."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

from gateway.http import Request, Router, ServerLimits, StreamingResponse, serve
from gateway.http.server import Server

CHUNK = 64 * 1024
NUM_CHUNKS = 512  # 32 MiB if nothing held the producer back
LIMITS = ServerLimits(write_high_water=256 * 1024)


def streaming_router(produced: list[int]) -> Router:
    async def chunks() -> AsyncIterator[bytes]:
        block = b"x" * CHUNK
        for _ in range(NUM_CHUNKS):
            produced[0] += 1
            yield block

    async def big(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), content_type="application/octet-stream")

    router = Router()
    router.add("GET", "/big", big)
    return router


def write_buffer_sizes(server: Server) -> list[int]:
    return [conn._transport.get_write_buffer_size() for conn in server._state.connections  # noqa: SLF001
            if conn._transport is not None]  # noqa: SLF001


def test_slow_reader_cannot_grow_server_memory() -> None:
    async def main() -> None:
        produced = [0]
        server = await serve(streaming_router(produced), "127.0.0.1", 0, LIMITS)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that takes almost nothing
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
            await asyncio.get_running_loop().sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.3)
            stalled_at = produced[0]
            await asyncio.sleep(0.3)
            # The producer is parked in drain(): no progress while the client reads nothing...
            assert produced[0] == stalled_at
            # ...and what it made is bounded by the socket buffers plus our high-water mark, far below
            # the 32 MiB an unthrottled producer would have queued in user space.
            assert stalled_at < NUM_CHUNKS // 4
            assert max(write_buffer_sizes(server)) <= LIMITS.write_high_water + CHUNK + 64
            # Once the client reads, the stream completes in full.
            received = 0
            loop = asyncio.get_running_loop()
            while True:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
                if not data:
                    break
                received += len(data)
                if received >= NUM_CHUNKS * CHUNK and b"0\r\n\r\n" in data[-16:]:
                    break
            assert produced[0] == NUM_CHUNKS and received > NUM_CHUNKS * CHUNK
        finally:
            sock.close()
            await server.shutdown(1.0)

    asyncio.run(main())
