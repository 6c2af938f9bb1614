"""Excessive repetition of a word or a two-word phrase, on the words of the folded text.

Done on the token list rather than with a back-referencing regex: comparing each token with the
next (and the one after) is one C-level `map`, and a run of equal comparisons is one bytes search,
so the cost stays linear and small even on 100 KB of "poem poem poem".
"""

from __future__ import annotations

import itertools
import operator

from security.tokens import WORD, words_in


def repeated_run(text: str, word_run: int, phrase_run: int,
                 tokens: list[str] | None = None) -> tuple[int, int] | None:
    """Span (in `text`) of the first word repeated `word_run` times in a row, or two-word phrase
    repeated `phrase_run` times; None when there is none. `tokens`: the words of `text` as
    found by tokens.words_in when the caller already has them (the pattern layer does)."""
    if tokens is None:
        tokens = words_in(text)
    if len(tokens) < min(word_run, 2 * phrase_run):
        return None
    same_next = bytes(map(operator.eq, tokens, itertools.islice(tokens, 1, None)))
    first = same_next.find(b"\x01" * (word_run - 1))
    span = word_run if first >= 0 else 0
    if first < 0:
        same_after_next = bytes(map(operator.eq, tokens, itertools.islice(tokens, 2, None)))
        first = same_after_next.find(b"\x01" * (2 * phrase_run - 2))
        if first < 0:
            return None
        span = 2 * phrase_run
    matches = itertools.islice(WORD.finditer(text), first, first + span)
    positions = [m.span() for m in matches]
    return positions[0][0], positions[-1][1]
