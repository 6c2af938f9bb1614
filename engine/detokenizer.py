"""Streaming a sequence's generated tokens out as text: whole characters only, cut at stop strings."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# Prompt tokens kept in the decode window so the first generated token decodes with its left
# context (SentencePiece drops a leading space at the start of a decode). vLLM uses the same 5.
_PROMPT_CONTEXT = 5
# A character is at most 4 bytes, so held tokens that still end in U+FFFD after this many are
# undecodable bytes, not a split character; emitting them bounds the window and the cost per token.
_MAX_HELD_TOKENS = 32
# Consumed ids are dropped from the window's list once this many pile up, keeping memory O(window).
_COMPACT_AFTER = 256
_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


@dataclass(slots=True)
class _ByteWindow:
    """Byte-level tokenizers (engine/byte_pieces.py): a token's text is its bytes, so the stream is
    decoded by lookups; the bytes of a character split over tokens are held until it is whole, with
    the same bound and the same forced end as _DecodeWindow."""

    pieces: Sequence[bytes]
    pending: bytes = b""
    held: int = 0  # tokens whose bytes are pending

    def push(self, token_id: int) -> str:
        pending = self.pending + (self.pieces[token_id] if 0 <= token_id < len(self.pieces) else b"")
        self.held += 1
        text = pending.decode("utf-8", "replace")
        if (not text or text.endswith(_REPLACEMENT)) and self.held <= _MAX_HELD_TOKENS:
            self.pending = pending
            return ""
        self.pending, self.held = b"", 0
        return text

    def finish(self) -> str:
        text = self.pending.decode("utf-8", "replace")
        self.pending, self.held = b"", 0
        return text


@dataclass(slots=True)
class _DecodeWindow:
    """vLLM's incremental decoding: decode only ids[prefix_offset:], emit what lies past read_offset.

    ids[prefix_offset:read_offset] is already emitted and is decoded again only as left context, so
    each step costs a decode of a few tokens however long the sequence is.
    """

    tokenizer: Decoder
    skip_special_tokens: bool
    ids: list[int]
    prefix_offset: int = 0
    read_offset: int = 0
    prefix_text: str | None = None  # decode(ids[prefix_offset:read_offset]), cached between steps

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._emit(force=False)

    def finish(self) -> str:
        """Whatever is still held, U+FFFD included: the sequence ended with those bytes."""
        return self._emit(force=True) if self.read_offset < len(self.ids) else ""

    def _emit(self, force: bool) -> str:
        if self.prefix_text is None:
            self.prefix_text = self._decode(self.prefix_offset, self.read_offset)
        new_text = self._decode(self.prefix_offset, len(self.ids))
        incomplete = len(new_text) <= len(self.prefix_text) or new_text.endswith(_REPLACEMENT)
        if incomplete and not force and len(self.ids) - self.read_offset <= _MAX_HELD_TOKENS:
            return ""
        delta = new_text[len(self.prefix_text) :]
        self.prefix_offset, self.read_offset, self.prefix_text = self.read_offset, len(self.ids), None
        if self.prefix_offset >= _COMPACT_AFTER:
            del self.ids[: self.prefix_offset]
            self.read_offset -= self.prefix_offset
            self.prefix_offset = 0
        return delta

    def _decode(self, start: int, end: int) -> str:
        if start == end:
            return ""
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=self.skip_special_tokens)


@dataclass(slots=True)
class _StopScanner:
    """Holds back text that may still turn into a stop string; cuts the output where one appears."""

    stops: tuple[str, ...]
    include_stop: bool
    pending: str = ""  # not emitted yet: always a proper prefix of some stop string
    stopped_by: str | None = None

    def feed(self, text: str) -> str:
        if not self.stops:  # nothing to hold back (most requests): every token's text passes
            return text
        if self.stopped_by is not None:
            return ""
        pending = self.pending + text
        match = self._first_match(pending)
        if match is not None:
            start, stop = match
            self.stopped_by, self.pending = stop, ""
            return pending[: start + len(stop) if self.include_stop else start]
        held = self._held_from(pending)
        self.pending = pending[held:]
        return pending[:held]

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _first_match(self, text: str) -> tuple[int, str] | None:
        # The stop that completes first wins (then the one starting first), as if text came one
        # character at a time: the result must not depend on how text was split into tokens.
        best: tuple[int, int, str] | None = None
        for stop in self.stops:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        return None if best is None else (best[1], best[2])

    def _held_from(self, text: str) -> int:
        longest = max(map(len, self.stops), default=0)
        for start in range(max(0, len(text) - longest + 1), len(text)):
            tail = text[start:]
            if any(stop.startswith(tail) for stop in self.stops):
                return start
        return len(text)


@dataclass(slots=True)
class _Output:
    chunks: list[str] = field(default_factory=list)

    def add(self, text: str) -> str:
        if text:
            self.chunks.append(text)
        return text

    def joined(self) -> str:
        if len(self.chunks) > 1:
            self.chunks[:] = ["".join(self.chunks)]
        return self.chunks[0] if self.chunks else ""


class IncrementalDetokenizer:
    """Turns one sequence's generated ids into text deltas that are safe to stream.

    A delta never ends inside a UTF-8 character, never contains a stop string (unless
    `include_stop_str_in_output`) nor anything after one, and the deltas plus `flush()` add up to
    the decode of all generated ids (cut at the stop string, if one was hit).
    """

    __slots__ = ("_window", "_scanner", "_output")

    def __init__(
        self,
        tokenizer: Decoder,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
        stop: Iterable[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        byte_pieces = getattr(tokenizer, "byte_pieces", None)
        pieces = byte_pieces(skip_special_tokens) if byte_pieces is not None else None
        self._window: _DecodeWindow | _ByteWindow
        if pieces is not None:
            self._window = _ByteWindow(pieces)  # no left context needed: bytes never merge or strip
        else:
            context = list(prompt_token_ids[-_PROMPT_CONTEXT:])
            self._window = _DecodeWindow(tokenizer, skip_special_tokens, context, 0, len(context))
        self._scanner = _StopScanner(tuple(s for s in stop if s), include_stop_str_in_output)
        self._output = _Output()

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return self._output.joined()

    @property
    def stopped_by(self) -> str | None:
        """The stop string that ended the text, if any; later tokens are then ignored."""
        return self._scanner.stopped_by

    def append(self, new_token_ids: Iterable[int]) -> str:
        """Feed newly generated ids; returns the text that can be sent now (possibly "")."""
        parts: list[str] = []
        for token_id in new_token_ids:
            if self._scanner.stopped_by is not None:
                break
            parts.append(self._scanner.feed(self._window.push(token_id)))
        return self._output.add("".join(parts))

    def flush(self) -> str:
        """At the end of the sequence: the held-back text, now that no more tokens will come."""
        if self._scanner.stopped_by is not None:
            return ""
        out = self._scanner.feed(self._window.finish())
        if self._scanner.stopped_by is None:
            out += self._scanner.flush()
        return self._output.add(out)
