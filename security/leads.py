"""Where each literal lead of the anchored regexes occurs in one text (patterns.py).

A regex that opens with an English word is tried only at that word's few positions (`match`),
which beats a `finditer` scan of the whole text per regex when a dozen regexes share the lead
("you"); a lead that occurs more than MAX_POSITIONS times (a flood) has no positions and its
regexes fall back to `finditer`, whose loop stays in C.

Positions of a lead are found with str.find, one pass over the text per lead: on a text dense
with trigger words that was ~45 passes (~150 us on 4 KB). A lead the regex bounds on both sides
(`Anchored.bounded`) can only match where it is a whole a-z word, one of the text's tokens
(tokens.py), so those leads are located together by one walk along the tokens: each needed
token is the first whole-word occurrence of its word after the previous one, since a nearer one
would be a token too (~50 us for the ~45 lead words of the trap-dense 4 KB of English, ~145 us
with a pass per word).
"""

from __future__ import annotations

from security.tokens import Words

MAX_POSITIONS = 32
# The walk reads every token and finds each occurrence: it beats one pass over the text per word
# from about a dozen words (an everyday 4 KB needs ~6 of them, a trap-dense one ~40), on texts
# short enough that a flood of one word stays cheap.
MIN_WALK = 16
MAX_WALK = 16384


class Leads:
    __slots__ = ("text", "_found", "_words")

    def __init__(self, text: str) -> None:
        self.text = text
        self._found: dict[str, list[int] | None] = {}
        self._words: dict[str, list[int]] = {}  # bounded leads located as whole words

    def positions(self, lead: str, bounded: bool) -> list[int] | None:
        """Offsets of `lead` in the text (only its whole-word ones when `bounded` and the lead
        was located by `locate_words`), or None past MAX_POSITIONS (a flood)."""
        if bounded:
            whole = self._words.get(lead)
            if whole is not None:
                return whole
        if lead in self._found:
            return self._found[lead]
        found: list[int] = []
        find = self.text.find
        i = find(lead)
        while i >= 0 and len(found) <= MAX_POSITIONS:
            found.append(i)
            i = find(lead, i + 1)
        result = found if len(found) <= MAX_POSITIONS else None
        self._found[lead] = result
        return result

    def locate_words(self, needed: set[str], words: Words) -> None:
        """Find the whole-word offsets of the `needed` lead words in one walk along the text's
        tokens (its a-z words, in order): each is the next " word " of the text with every other
        character made a space. Words past MAX_POSITIONS are left to `positions`."""
        if len(needed) < MIN_WALK or len(self.text) > MAX_WALK:
            return
        spaced = " " + words.spaced + " "
        find = spaced.find
        located: dict[str, tuple[str, list[int]]] = {word: (f" {word} ", []) for word in needed}
        at = 0
        for word in filter(needed.__contains__, words.tokens):
            needle, offsets = located[word]
            at = find(needle, at)
            assert at >= 0, "each token of a text is a whole word of it"
            offsets.append(at)  # the word starts at at + 1 in `spaced`, at `at` in the text
            at += len(needle) - 1  # on the space after it, which may open the next needle
        self._words.update((word, offsets) for word, (_, offsets) in located.items()
                           if len(offsets) <= MAX_POSITIONS)
