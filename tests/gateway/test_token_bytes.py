"""How logprobs name tokens that hold part of a character (gateway/openai/token_bytes.py)."""
from __future__ import annotations

from typing import Any

from gateway.openai.token_bytes import TextOffsets, token_bytes, token_string


class SentencePieceLike:
    """A tokenizer whose decoder is not byte-level: no byte pieces, bytes as `<0xNN>` tokens."""

    vocab = ["▁hello", "<0xE3>", "<0x81>"]

    def byte_pieces(self, skip_special_tokens: bool = True) -> None:
        return None

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.vocab[i].replace("▁", " ") if not self.vocab[i].startswith("<0x") else "\ufffd"
                       for i in ids)


def test_a_token_valid_on_its_own_keeps_its_text_and_others_are_named_by_their_bytes() -> None:
    assert token_string(" Paris".encode()) == " Paris"
    assert token_string("日".encode()) == "日"
    assert token_string(b"\xe3\x81") == "bytes:\\xe3\\x81"
    assert token_string(b"\x81") != token_string(b"\x82")


def test_byte_fallback_tokens_have_their_byte() -> None:
    tok: Any = SentencePieceLike()
    assert [token_bytes(tok, i) for i in range(3)] == [b" hello", b"\xe3", b"\x81"]


def test_offsets_count_whole_characters() -> None:
    # "こ" (e3 81 93) and "れ" (e3 82 8c) split as [e3 81] [93 e3] [82 8c] [!]
    offsets = TextOffsets()
    assert [offsets.next(raw) for raw in (b"\xe3\x81", b"\x93\xe3", b"\x82\x8c", b"!")] == [0, 0, 1, 2]
