"""Server-sent events out of arbitrary byte chunks: the gateway relays whole events only."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yields each event with its terminating blank line; a trailing partial event is yielded at
    the end as it is. Accepts LF and CRLF line endings."""
    buffer = b""
    async for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        while True:
            end, sep = _event_end(buffer)
            if end < 0:
                break
            yield buffer[:end + sep]
            buffer = buffer[end + sep:]
    if buffer:
        yield buffer


def _event_end(buffer: bytes) -> tuple[int, int]:
    lf = buffer.find(b"\n\n")
    crlf = buffer.find(b"\r\n\r\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2


def event_data(event: bytes) -> bytes | None:
    """The data of a one-line `data: ...` event, or None for comments and other fields."""
    if event.startswith(b"data:"):
        return event[5:].strip()
    return None


_USAGE_COMMENT = b": usage "


def usage_comment(event: bytes) -> bytes | None:
    """The JSON of a `: usage {...}` comment event (an engine's usage so far), else None."""
    if event.startswith(_USAGE_COMMENT):
        return event[len(_USAGE_COMMENT):].strip()
    return None
