"""Reasoning split: `<think>` blocks to reasoning_content, driven with engine-like deltas."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from engine.detokenizer import IncrementalDetokenizer
from engine.loader.gguf_metadata import read_gguf_metadata
from engine.tokenizer import Tokenizer
from gateway.openai.reasoning import ReasoningMarkers, ReasoningSplitter

MARKERS = ReasoningMarkers()
THINKING_TEMPLATE = "{% for m in messages %}{{ m.content }}\n{% endfor %}<think>\n"


@pytest.fixture(scope="module")
def smol(smollm2_gguf: str) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_gguf_metadata(smollm2_gguf))


def word_tokenizer(chat_template: str | None = None) -> Tokenizer:
    """A Qwen3-like vocabulary where each marker is one added (non-special) token."""
    words = ["<unk>", "hmm", "so", "Paris", "is", "it", "!"]
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_tokens(["<think>", "</think>"])
    return Tokenizer(backend, bos_token_id=None, eos_token_id=None, chat_template=chat_template)


def run(tok: Tokenizer, ids: list[int], thinking: bool = False) -> tuple[str, str, int, ReasoningSplitter]:
    """Feeds ids one token per delta through the engine's detokenizer, as the engine does."""
    detok = IncrementalDetokenizer(tok, [], skip_special_tokens=True)
    splitter = ReasoningSplitter(MARKERS, thinking)
    reasoning, content = [], []
    for token_id in ids:
        r, c = splitter.feed(detok.append([token_id]), [token_id])
        reasoning.append(r)
        content.append(c)
    r, c = splitter.feed(detok.flush(), [])
    reasoning.append(r)
    content.append(c)
    r, c = splitter.flush()
    return "".join(reasoning) + r, "".join(content) + c, splitter.reasoning_tokens, splitter


def test_markers_split_across_tokens_with_the_real_tokenizer(smol: Tokenizer) -> None:
    # SmolLM2 spells "<think>" as three tokens ("<", "think", ">"): every delta holds part of a marker.
    assert len(smol.encode("<think>", add_special_tokens=False)) == 3
    thought, answer = "The user asks about France.", " Paris is the capital."
    ids = smol.encode(f"<think>{thought}</think>{answer}", add_special_tokens=False)
    reasoning, content, count, _ = run(smol, ids)
    assert (reasoning, content) == (thought, answer)
    # Markers count as reasoning: every token up to and including "</think>".
    assert count == len(smol.encode(f"<think>{thought}</think>", add_special_tokens=False))
    assert count < len(ids)


def test_text_before_the_block_is_content_and_partial_markers_are_not_eaten(smol: Tokenizer) -> None:
    text = "Sure <b>bold</b> then <think>deep</think>done"
    reasoning, content, count, _ = run(smol, smol.encode(text, add_special_tokens=False))
    assert reasoning == "deep" and content == "Sure <b>bold</b> then done"
    # Tokens: ... " then", " <", "think", ">", "deep", "</", "think", ">", "done". The token " <" also
    # carries answer text (the space), so it counts as content; the six after it are reasoning.
    assert count == 6


def test_no_markers_means_all_content_and_no_reasoning_tokens(smol: Tokenizer) -> None:
    reasoning, content, count, splitter = run(smol, smol.encode("Just an answer <", add_special_tokens=False))
    assert (reasoning, content, count) == ("", "Just an answer <", 0)
    assert not splitter.saw_reasoning


def test_unterminated_block_is_all_reasoning(smol: Tokenizer) -> None:
    ids = smol.encode("<think>still thinking </thi", add_special_tokens=False)
    reasoning, content, count, _ = run(smol, ids)
    assert (reasoning, content, count) == ("still thinking </thi", "", len(ids))


def test_prompt_that_opens_the_block_starts_inside_it() -> None:
    tok = word_tokenizer(THINKING_TEMPLATE)
    markers = ReasoningMarkers.detect(tok)
    assert markers == MARKERS and markers.starts_thinking(tok.apply_chat_template([{"content": "q"}]))
    ids = tok.encode("hmm so </think> Paris is it !", add_special_tokens=False)
    reasoning, content, count, _ = run(tok, ids, thinking=True)
    assert reasoning.strip() == "hmm so" and content.strip() == "Paris is it !"
    assert count == 3  # hmm, so, </think>


def test_single_token_markers_detected_from_the_vocabulary(smol: Tokenizer) -> None:
    tok = word_tokenizer()
    assert ReasoningMarkers.detect(tok) == MARKERS
    ids = tok.encode("<think> hmm </think> Paris", add_special_tokens=False)
    assert len(ids) == 4
    reasoning, content, count, _ = run(tok, ids)
    assert reasoning.strip() == "hmm" and content.strip() == "Paris" and count == 3
    # SmolLM2 neither has them as tokens nor writes them in its template: no splitting by default.
    assert ReasoningMarkers.detect(smol) is None


def test_second_block_is_plain_content() -> None:
    splitter = ReasoningSplitter(MARKERS)
    assert splitter.feed("<think>a</think>b", [1, 2, 3]) == ("a", "b")
    assert splitter.feed("<think>c</think>", [4]) == ("", "<think>c</think>")
    assert splitter.reasoning_tokens == 3


def test_held_tokens_are_attributed_when_their_text_arrives() -> None:
    # The detokenizer held a split character: its tokens come with empty text, then the text.
    splitter = ReasoningSplitter(MARKERS, thinking=True)
    assert splitter.feed("", [1]) == ("", "")
    assert splitter.feed("é</think>", [2]) == ("é", "")
    assert splitter.feed("", [3]) == ("", "")
    assert splitter.feed("ok", [4]) == ("", "ok")
    assert splitter.reasoning_tokens == 2
