"""Where the literals of the pattern rules occur in one folded text, all found in one pass.

The literals are every regex lead (anchor.py: the literal each of its matches starts with) and
every trigger phrase (triggers.py). A scan asks which of them occur (the trigger prefilters)
and where each needed lead occurs (its regexes are tried only there, patterns.py). Python's `re`
has no multi-literal search, so that was one pass over the text per literal: ~45 `str.find`
passes on a trap-dense 4 KB of English, ~60 `finditer` passes and a set of the text's characters
on as much Chinese or Japanese. The native automaton (csrc/security/literal_automaton.h,
Aho-Corasick) reads each character once for all ~800 literals; `find_reference` is the plain
definition it is tested against.

Offsets are kept up to MAX_POSITIONS per literal: past that (a flood of one word) a lead's
regexes run as `finditer` over the text, whose loop stays in C.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from security.native import Literals as _Automaton

MAX_POSITIONS = 32


@dataclass(frozen=True, slots=True)
class Found:
    """The literals of one text: each one that occurs with its start offsets (None past
    MAX_POSITIONS), and for the whole-word literals their offsets as whole a-z words."""

    starts: dict[str, list[int] | None]
    word_starts: dict[str, list[int] | None]
    present: set[str]  # starts' keys, as a set (set & set walks the smaller side)

    def positions(self, lead: str, whole_word: bool) -> list[int] | None:
        """Every offset where `lead` can open a match (only its whole-word ones when
        `whole_word`); None for a flood."""
        table = self.word_starts if whole_word else self.starts
        return table.get(lead, [])


class LiteralSet:
    """A fixed set of literals, some of them also to be found as whole a-z words (no ASCII
    letter a-z right before or after them: the tokens of tokens.py)."""

    __slots__ = ("literals", "whole_words", "_automaton")

    def __init__(self, literals: Iterable[str], whole_words: Iterable[str]) -> None:
        self.whole_words = frozenset(whole_words)
        self.literals = tuple(sorted(set(literals) | self.whole_words))
        assert all(self.literals), "rule compilation never yields an empty lead or phrase"
        self._automaton = _Automaton(list(self.literals), [s in self.whole_words for s in self.literals])

    def find(self, text: str) -> Found:
        starts, word_starts = self._automaton.find(text, MAX_POSITIONS)
        return Found(starts, word_starts, set(starts))

    def find_reference(self, text: str) -> Found:
        """`find` by one `str.find` pass per literal: the definition the automaton must meet."""
        starts: dict[str, list[int] | None] = {}
        word_starts: dict[str, list[int] | None] = {}
        for literal in self.literals:
            offsets = _occurrences(text, literal)
            if offsets:
                starts[literal] = offsets if len(offsets) <= MAX_POSITIONS else None
            if literal in self.whole_words:
                whole = [i for i in offsets if _whole_word(text, i, i + len(literal))]
                if whole:
                    word_starts[literal] = whole if len(whole) <= MAX_POSITIONS else None
        return Found(starts, word_starts, set(starts))


def _occurrences(text: str, literal: str) -> list[int]:
    found = []
    i = text.find(literal)
    while i >= 0:
        found.append(i)
        i = text.find(literal, i + 1)
    return found


def _whole_word(text: str, start: int, end: int) -> bool:
    return not (start > 0 and "a" <= text[start - 1] <= "z") and not (end < len(text) and "a" <= text[end] <= "z")
