"""Splitting a reasoning model's output into its thinking (`reasoning_content`) and its answer.

The model writes `<think>...</think>` (markers configurable). Text arrives in deltas that may cut
a marker anywhere, so text that could still be the start of the awaited marker is held back until
the next delta decides. Reasoning tokens are counted from the engine's token ids: every token
whose text fell inside the thinking block (markers included) counts, the way OpenAI bills them.
Only the first thinking block is split out; a marker after it is ordinary answer text.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from engine.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class ReasoningMarkers:
    start: str = "<think>"
    end: str = "</think>"

    @classmethod
    def detect(cls, tokenizer: Tokenizer, chat_template: str | None = None) -> ReasoningMarkers | None:
        """The default markers when the model knows them: each is one token of its vocabulary
        (an added token, as in Qwen3 or DeepSeek-R1), or its chat template writes them."""
        markers = cls()
        template = chat_template if chat_template is not None else tokenizer.chat_template
        if template and markers.start in template and markers.end in template:
            return markers
        single = all(len(tokenizer.encode(m, add_special_tokens=False)) == 1 for m in (markers.start, markers.end))
        return markers if single else None

    def starts_thinking(self, prompt: str) -> bool:
        """Templates such as DeepSeek-R1's open the block in the prompt: the output starts inside it."""
        return prompt.rstrip().endswith(self.start)


class _State(enum.Enum):
    BEFORE = "before"  # looking for the start marker
    THINKING = "thinking"  # looking for the end marker
    ANSWER = "answer"  # the block is over: all text is content


@dataclass(slots=True)
class ReasoningSplitter:
    """One choice's splitter: feed each delta's text and token ids, get (reasoning, content)."""

    markers: ReasoningMarkers
    thinking: bool = False  # the prompt already opened the block
    reasoning_tokens: int = 0
    _state: _State = _State.BEFORE
    _pending: str = ""  # held back: a proper prefix of the marker awaited
    _held_tokens: int = 0  # tokens whose text is not decided yet (held here or by the detokenizer)
    _seen_reasoning: bool = False

    def __post_init__(self) -> None:
        if self.thinking:
            self._state = _State.THINKING
            self._seen_reasoning = True

    @property
    def saw_reasoning(self) -> bool:
        return self._seen_reasoning

    def feed(self, text: str, token_ids: Sequence[int]) -> tuple[str, str]:
        self._held_tokens += len(token_ids)
        if not text:
            return "", ""
        reasoning, content, touched = self._split(self._pending + text)
        if touched:
            self.reasoning_tokens += self._held_tokens
            self._held_tokens = 0
        elif content:
            self._held_tokens = 0
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        """At the end of the choice: held text goes where the state says it belongs."""
        pending, self._pending = self._pending, ""
        if self._state is _State.THINKING:
            self.reasoning_tokens += self._held_tokens
            self._held_tokens = 0
            self._seen_reasoning = True
            return pending, ""
        self._held_tokens = 0
        return "", pending

    def _split(self, text: str) -> tuple[str, str, bool]:
        """Route text by state, consuming markers; returns reasoning, content, and whether any of
        this text was part of the thinking block."""
        reasoning: list[str] = []
        content: list[str] = []
        touched = False
        self._pending = ""
        while text:
            if self._state is _State.ANSWER:
                content.append(text)
                break
            marker = self.markers.start if self._state is _State.BEFORE else self.markers.end
            out = content if self._state is _State.BEFORE else reasoning
            at = text.find(marker)
            if at >= 0:
                out.append(text[:at])
                touched = True
                self._seen_reasoning = True
                self._state = _State.THINKING if self._state is _State.BEFORE else _State.ANSWER
                text = text[at + len(marker):]
                continue
            keep = _partial_suffix(text, marker)
            out.append(text[: len(text) - keep])
            self._pending = text[len(text) - keep:]
            if self._state is _State.THINKING:
                touched = True
            break
        return "".join(reasoning), "".join(content), touched


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of text that is a proper prefix of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
