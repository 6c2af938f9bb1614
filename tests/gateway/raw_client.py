"""A minimal HTTP/1.1 client for tests, independent of the code under test: one request per
connection (`connection: close`), the whole answer read until EOF, chunked bodies reassembled."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> dict:
        return json.loads(self.content)

    def events(self) -> list[bytes]:
        """The data of each server-sent event."""
        return [e[6:] for e in self.content.split(b"\n\n") if e.startswith(b"data: ")]


def encode_request(method: str, path: str, body: bytes, api_key: str | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\n"
    if api_key:
        head += f"authorization: Bearer {api_key}\r\n"
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


def parse_response(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return RawResponse(status, headers, body)


def dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)


async def post(port: int, path: str, body: dict | bytes, api_key: str | None = None) -> RawResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_request("POST", path, data, api_key))
        return parse_response(await reader.read())
    finally:
        writer.close()


async def post_and_leave(port: int, path: str, body: dict) -> bytes:
    """Sends the request, reads the first bytes of the answer, then drops the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_request("POST", path, json.dumps(body).encode()))
    first = await reader.read(1)
    writer.transport.abort()
    return first


async def get(port: int, path: str) -> RawResponse:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n".encode())
        return parse_response(await reader.read())
    finally:
        writer.close()
