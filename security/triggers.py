"""A rule's trigger prefilter: is any of its words or phrases in the text?

ASCII phrases that are one word are looked up in the text's word set; every other phrase
(several words, punctuation, Chinese, Japanese) in the set of phrases found in the text, which
the pattern layer takes for all rules at once in one pass (literals.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Trigger:
    words: frozenset[str]  # ASCII words, looked up in the text's word set
    phrases: frozenset[str]  # other phrases, looked up in the text's found literals
    always: bool  # no word and no phrase: nothing to wait for

    @classmethod
    def of(cls, words: frozenset[str], phrases: frozenset[str]) -> Trigger:
        return cls(words, phrases, not words and not phrases)

    def present(self, words: set[str], phrases: set[str]) -> bool:
        """Whether a trigger occurs; `words`: the text's a-z words; `phrases`: the phrases
        (and other literals) that occur in it."""
        return self.always or not self.words.isdisjoint(words) or not self.phrases.isdisjoint(phrases)
