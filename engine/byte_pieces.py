"""Each token's bytes, for tokenizers whose decoder is byte-level (GPT-2-style BPE: SmolLM2, Llama 3,
Qwen, ...). Their decode of ids is the ids' bytes joined and read as UTF-8 (invalid sequences become
U+FFFD), so a stream can be decoded a token at a time by table lookups instead of a call into the
tokenizer per token (engine/detokenizer.py): at batch 256 those calls were a fifth of a step's host
time.
"""
from __future__ import annotations

from tokenizers import Tokenizer as Backend
from tokenizers import decoders


def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shifted)
            shifted += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_DECODER = _byte_decoder()


def _piece(token: str) -> bytes:
    # The ByteLevel decoder maps each character through the table; one outside it (added tokens
    # may hold any text) stands for its own UTF-8 bytes.
    out = bytearray()
    for ch in token:
        byte = _BYTE_DECODER.get(ch)
        if byte is None:
            out += ch.encode("utf-8")
        else:
            out.append(byte)
    return bytes(out)


def byte_pieces(backend: Backend, vocab_size: int, skip_special_tokens: bool) -> tuple[bytes, ...] | None:
    """Bytes of ids 0..vocab_size-1 as `backend.decode` renders them, or None when its decoder is not
    plain byte-level (SentencePiece's Metaspace and byte fallback decoders strip and fuse)."""
    if not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    special = {i for i, token in backend.get_added_tokens_decoder().items() if token.special}
    pieces = []
    for i in range(vocab_size):
        token = backend.id_to_token(i)
        # Ids the tokenizer does not know (a model's padded vocabulary) decode to nothing.
        pieces.append(b"" if token is None or (skip_special_tokens and i in special) else _piece(token))
    return tuple(pieces)
