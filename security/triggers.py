"""A rule's trigger prefilter: is any of its words or phrases in the text?

ASCII phrases that are one word are looked up in the text's word set; other ASCII phrases are
searched. Non-ASCII phrases (Chinese, Japanese) are grouped by their key character
(anchor.key_char): one set intersection with the text's characters picks the few groups worth
searching, so a check walks a handful of phrases in Python instead of every phrase of the rule
(override.ja alone has 33 verbs).
"""

from __future__ import annotations

from dataclasses import dataclass

from security.anchor import key_char


@dataclass(frozen=True, slots=True)
class Trigger:
    words: frozenset[str]  # ASCII words, looked up in the text's word set
    ascii: tuple[str, ...]  # other ASCII phrases, searched
    # key character -> the non-ASCII phrases with that key, each with the set of its characters
    wide: dict[str, tuple[tuple[str, frozenset[str]], ...]]
    keys: frozenset[str]  # wide's keys
    always: bool  # no word and no phrase: nothing to wait for

    @classmethod
    def of(cls, words: frozenset[str], phrases: tuple[str, ...]) -> Trigger:
        wide: dict[str, list[tuple[str, frozenset[str]]]] = {}
        for p in phrases:
            if not p.isascii():
                wide.setdefault(key_char(p), []).append((p, frozenset(p)))
        return cls(words, tuple(p for p in phrases if p.isascii()), {k: tuple(v) for k, v in wide.items()},
                   frozenset(wide), not words and not phrases)

    @property
    def phrases(self) -> tuple[str, ...]:
        return self.ascii + tuple(p for group in self.wide.values() for p, _ in group)

    def present(self, words: set[str], text: str, chars: frozenset[str] | set[str],
                seen: dict[str, bool], hay: str | None = None) -> bool:
        """Whether a trigger occurs; `chars`: the text's non-ASCII characters (empty for ASCII
        text); `seen`: this text's phrase searches so far (rules share phrases); `hay`: on a long
        text, its runs of the characters non-ASCII phrases are made of (patterns.py), which hold
        such a phrase exactly when the text does."""
        if self.always or not self.words.isdisjoint(words):
            return True
        for p in self.ascii:
            if _found(p, text, seen):
                return True
        if chars:
            where = hay if hay is not None else text
            for k in self.keys.intersection(chars):
                for p, needs in self.wide[k]:
                    if needs <= chars and _found(p, where, seen):
                        return True
        return False


def _found(phrase: str, text: str, seen: dict[str, bool]) -> bool:
    found = seen.get(phrase)
    if found is None:
        found = seen[phrase] = phrase in text
    return found
