"""Incremental detokenization: whole characters only, stop strings cut, O(1) work per token."""
from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.detokenizer import IncrementalDetokenizer
from engine.loader.gguf_metadata import read_gguf_metadata
from engine.tokenizer import Tokenizer

PROMPT = "<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\n"


class ByteTokenizer:
    """Every id is one byte, so every non-ASCII character arrives split across tokens."""

    def __init__(self, strip_leading_space: bool = False) -> None:
        self.strip_leading_space = strip_leading_space
        self.calls: list[int] = []

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self.calls.append(len(ids))
        text = bytes(ids).decode("utf-8", errors="replace")
        # SentencePiece decoders drop one leading space of whatever they decode.
        return text[1:] if self.strip_leading_space and text.startswith(" ") else text


@pytest.fixture(scope="module")
def tok(smollm2_gguf: str) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_gguf_metadata(smollm2_gguf))


def _chunks(ids: list[int], sizes: list[int]) -> list[list[int]]:
    out, pos = [], 0
    for size in sizes:
        if pos >= len(ids):
            break
        out.append(ids[pos : pos + size])
        pos += size
    if pos < len(ids):
        out.append(ids[pos:])
    return out


def _stream(detok: IncrementalDetokenizer, chunks: list[list[int]]) -> list[str]:
    deltas = [detok.append(chunk) for chunk in chunks]
    deltas.append(detok.flush())
    return deltas


chunk_sizes = st.lists(st.integers(min_value=1, max_value=4), max_size=200)
slow_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@slow_settings
@given(text=st.text(max_size=60), sizes=chunk_sizes, with_prompt=st.booleans())
def test_deltas_add_up_to_decode(tok: Tokenizer, text: str, sizes: list[int], with_prompt: bool) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    full = tok.decode(ids)
    detok = IncrementalDetokenizer(tok, tok.encode(PROMPT) if with_prompt else [])
    deltas = _stream(detok, _chunks(ids, sizes))
    assert "".join(deltas) == full == detok.text
    if "\ufffd" not in full:
        assert not any("\ufffd" in delta for delta in deltas)
    assert detok.stopped_by is None


@slow_settings
@given(text=st.text(max_size=40), sizes=chunk_sizes)
def test_split_characters_are_held_until_complete(text: str, sizes: list[int]) -> None:
    ids = list(text.encode())
    deltas = _stream(IncrementalDetokenizer(ByteTokenizer(), [0x20]), _chunks(ids, sizes))
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas) or "\ufffd" in text


def test_emoji_split_across_tokens(tok: Tokenizer) -> None:
    ids = tok.encode("ok 👨‍👩‍👧 🇫🇷!", add_special_tokens=False)
    assert any("\ufffd" in tok.decode(ids[:n]) for n in range(len(ids)))  # really split mid-character
    detok = IncrementalDetokenizer(tok, tok.encode(PROMPT))
    deltas = [detok.append([i]) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == "ok 👨‍👩‍👧 🇫🇷!"


def test_unfinished_character_comes_out_at_flush(tok: Tokenizer) -> None:
    ids = tok.encode("a😀", add_special_tokens=False)[:-1]
    detok = IncrementalDetokenizer(tok, [])
    assert detok.append(ids) == "a"
    assert detok.flush() == tok.decode(ids)[1:] and detok.text.endswith("\ufffd")


def test_undecodable_bytes_do_not_grow_the_window() -> None:
    decoder = ByteTokenizer()
    detok = IncrementalDetokenizer(decoder, [])
    streamed = "".join(detok.append([0xFF]) for _ in range(500))
    assert streamed and set(streamed) == {"\ufffd"}
    assert streamed + detok.flush() == "\ufffd" * 500
    assert max(decoder.calls) <= 2 * 33  # held tokens plus the previous emission's context


def test_work_per_token_is_bounded(tok: Tokenizer) -> None:
    class Counting:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
            self.calls.append(len(ids))
            return tok.decode(ids, skip_special_tokens)

    ids = tok.encode("Le café coûte 3 € ; 東京は晴れ 😀. " * 150, add_special_tokens=False)
    counting = Counting()
    detok = IncrementalDetokenizer(counting, tok.encode(PROMPT))
    for i in ids:
        detok.append([i])
    detok.flush()
    assert detok.text == tok.decode(ids)
    assert len(counting.calls) <= 2 * len(ids) + 2
    assert max(counting.calls) <= 12


def test_prompt_context_keeps_leading_space() -> None:
    decoder = ByteTokenizer(strip_leading_space=True)
    prompt, output = list(b"Hi"), list(b" there you")
    detok = IncrementalDetokenizer(decoder, prompt)
    streamed = "".join(detok.append([i]) for i in output) + detok.flush()
    assert streamed == " there you"


def test_special_tokens_kept_when_asked(tok: Tokenizer) -> None:
    ids = tok.encode("Hi<|im_end|>", add_special_tokens=False)
    assert "".join(_stream(IncrementalDetokenizer(tok, []), [ids])) == "Hi"
    kept = IncrementalDetokenizer(tok, [], skip_special_tokens=False, stop=["<|im_end|>"])
    assert kept.append(ids) == "Hi" and kept.stopped_by == "<|im_end|>"


def _run(tok: Tokenizer, text: str, one_at_a_time: bool = True, **kwargs) -> tuple[IncrementalDetokenizer, list[str]]:
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode(PROMPT), **kwargs)
    deltas = [detok.append([i]) for i in ids] if one_at_a_time else [detok.append(ids)]
    return detok, deltas


def test_stop_string_spanning_tokens(tok: Tokenizer) -> None:
    text = "Hello world, this is the END of it"
    ids = tok.encode("the END", add_special_tokens=False)
    assert len(ids) > 1
    detok, deltas = _run(tok, text, stop=["the END"])
    assert detok.stopped_by == "the END"
    assert "".join(deltas) == detok.text == "Hello world, this is "
    assert detok.flush() == "" and detok.append(tok.encode(" more")) == ""
    assert detok.text == "Hello world, this is "


def test_stop_string_included_when_asked(tok: Tokenizer) -> None:
    detok, deltas = _run(tok, "Hello world, this is the END of it", stop=["the END"], include_stop_str_in_output=True)
    assert "".join(deltas) + detok.flush() == "Hello world, this is the END"


def test_held_stop_prefix_is_flushed(tok: Tokenizer) -> None:
    detok, deltas = _run(tok, "It is the EN", stop=["the END"])
    assert "".join(deltas) == "It is "  # "the EN" might still become the stop string
    assert detok.flush() == "the EN" and detok.text == "It is the EN" and detok.stopped_by is None


def test_text_that_cannot_start_a_stop_is_not_held(tok: Tokenizer) -> None:
    detok, deltas = _run(tok, "abc xyz", stop=["STOP"])
    assert "".join(deltas) == "abc xyz" and detok.flush() == ""


def test_first_completed_stop_wins(tok: Tokenizer) -> None:
    for one_at_a_time in (True, False):
        detok, deltas = _run(tok, "one two three four", one_at_a_time, stop=["three four", "two", "one two three"])
        assert (detok.stopped_by, "".join(deltas)) == ("two", "one ")
        detok, deltas = _run(tok, "Stop right here", one_at_a_time, stop=["Stop"])
        assert (detok.stopped_by, "".join(deltas)) == ("Stop", "")


@slow_settings
@given(
    text=st.text(alphabet="ab c😀é\n", max_size=40),
    bounds=st.tuples(st.integers(0, 40), st.integers(1, 6)),
    sizes=chunk_sizes,
    include=st.booleans(),
)
def test_stop_strings_any_split(
    tok: Tokenizer, text: str, bounds: tuple[int, int], sizes: list[int], include: bool
) -> None:
    start = min(bounds[0], len(text))
    stop = text[start : start + bounds[1]] or "zz"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], stop=[stop], include_stop_str_in_output=include)
    out = "".join(_stream(detok, _chunks(ids, sizes)))
    found = text.find(stop)
    if found < 0:
        assert (out, detok.stopped_by) == (text, None)
    else:
        assert out == text[: found + len(stop) if include else found] == detok.text
        assert detok.stopped_by == stop


class _WindowOnly:
    """The same tokenizer without its byte table: the detokenizer falls back to decode calls."""

    def __init__(self, tok: Tokenizer) -> None:
        self._tok = tok

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens)


@pytest.mark.parametrize("skip", [True, False])
def test_byte_pieces_decode_like_the_tokenizer_for_every_id(tok: Tokenizer, skip: bool) -> None:
    pieces = tok.byte_pieces(skip)
    assert pieces is not None and len(pieces) >= tok.vocab_size
    for i in range(tok.vocab_size):
        assert pieces[i].decode("utf-8", "replace") == tok.decode([i], skip), i


@slow_settings
@given(data=st.data(), skip=st.booleans())
def test_byte_window_streams_what_the_decode_window_streams(tok: Tokenizer, data: st.DataObject, skip: bool) -> None:
    # Random ids from the whole vocabulary: byte tokens that split characters, special tokens, bytes
    # that never form a character.
    ids = data.draw(st.lists(st.integers(min_value=0, max_value=tok.vocab_size - 1), max_size=80))
    sizes = data.draw(chunk_sizes)
    fast = IncrementalDetokenizer(tok, tok.encode(PROMPT), skip)
    slow = IncrementalDetokenizer(_WindowOnly(tok), tok.encode(PROMPT), skip)
    assert _stream(fast, _chunks(ids, sizes)) == _stream(slow, _chunks(ids, sizes))


def test_sentencepiece_decoders_have_no_byte_table() -> None:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models

    backend = Backend(models.BPE(vocab={"\u2581a": 0, "b": 1}, merges=[]))
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    assert Tokenizer(backend, bos_token_id=None, eos_token_id=None).byte_pieces() is None
