"""A token as logprobs show it: its own bytes, and a string that keeps distinct tokens distinct.

Byte-level tokenizers spread a CJK character or an emoji over several tokens, each holding part of
its UTF-8 bytes. Decoded alone, every such token is U+FFFD: `bytes` would then be U+FFFD's bytes,
not the token's (OpenAI documents `bytes` as what a client joins to rebuild such characters), and
the completions API's top_logprobs, a dict keyed by token string, would fold distinct tokens into
one "\ufffd" key. vLLM keys by the token decoded alone and so has that collision; OpenAI names such
a token by its bytes, `bytes:\\xe3\\x81`. We follow OpenAI in both endpoints: a valid UTF-8 token
keeps its text, any other is named by its bytes, so distinct tokens keep distinct keys.
"""
from __future__ import annotations

import codecs
import re

from engine.tokenizer import Tokenizer

# SentencePiece's byte fallback: a token standing for one byte the vocabulary has no piece for.
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(tok: Tokenizer, token_id: int) -> bytes:
    """The bytes `token_id` adds to a text (special tokens as their text)."""
    pieces = tok.byte_pieces(skip_special_tokens=False)
    if pieces is not None:
        return pieces[token_id] if 0 <= token_id < len(pieces) else b""
    [piece] = tok.convert_ids_to_tokens([token_id])
    fallback = _BYTE_FALLBACK.fullmatch(piece or "")
    if fallback is not None:
        return bytes([int(fallback.group(1), 16)])
    return tok.decode([token_id], skip_special_tokens=False).encode("utf-8")


def token_string(raw: bytes) -> str:
    """The token's text, or OpenAI's `bytes:\\xNN...` when its bytes are not UTF-8 on their own."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class TextOffsets:
    """Where each token of a choice starts in its text, in characters: the characters completed by
    the tokens before it. A token that starts inside a character points at that character, so no
    offset passes the end of the text, which holds whole characters only."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._offset = 0

    def next(self, raw: bytes) -> int:
        offset = self._offset
        self._offset += len(self._decoder.decode(raw))
        return offset
