"""Fold a prompt once into the text every rule matches against.

Folding = NFKD, drop combining marks, casefold, map look-alike letters (Cyrillic "а", Greek "ο")
to their Latin twins, drop invisible/format characters, and turn Unicode tag characters back into
the ASCII they smuggle. Rules are folded the same way, so "sуstème", "ＩＧＮＯＲＥ" and "i\u200bgnore"
all meet the plain patterns. Case and accents are gone after folding; patterns are written
accent-free and lower-case.

Speed: ASCII text (most prompts) folds with one `str.lower()`, offsets unchanged. Other text goes
through whole-string C operations (see fold). Offsets back to the original are only computed when a
rule matched, from the few characters that do not fold one for one (each folded once per process).
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

_DATA = Path(__file__).with_name("rules") / "confusables.json"

# Hangul fillers render as nothing but are letters (Lo), so the category test misses them.
_FILLERS = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0})


def load_confusables() -> dict[str, str]:
    with open(_DATA, encoding="utf-8") as f:
        data = json.load(f)
    return {k: v for k, v in data["map"].items()}


def _dropped(cp: int) -> bool:
    """Characters folding removes: format characters (zero-width, bidi controls, BOM, soft hyphen)
    anywhere, Hangul fillers, and non-spacing marks in the BMP (accents, Zalgo, kana voicing
    marks, variation selectors) plus the astral variation selectors. Other astral marks belong to
    historic scripts no rule reads; keeping them keeps the astral pass a short class."""
    if 0xE0000 <= cp <= 0xE007F:
        return False  # tags are mapped to ASCII, not dropped
    category = unicodedata.category(chr(cp))
    if category == "Cf" or cp in _FILLERS:
        return True
    if category in ("Mn", "Me"):
        return cp < 0x10000 or 0xE0100 <= cp <= 0xE01EF
    return False


class _FoldTable(dict):
    """ord -> folded string; str.translate looks characters up here, misses are computed once."""

    def __init__(self, confusables: dict[str, str]) -> None:
        super().__init__()
        self._confusables = confusables
        for cp in range(128):
            self[cp] = chr(cp).lower()

    def __missing__(self, cp: int) -> str:
        out = self._fold(cp)
        self[cp] = out
        return out

    def _fold(self, cp: int) -> str:
        if 0xE0000 <= cp <= 0xE007F:
            # Tag characters: U+E0041 is a hidden "A". Surface it so rules see the message.
            return chr(cp - 0xE0000).lower() if 0xE0020 <= cp <= 0xE007E else ""
        if _dropped(cp):
            return ""
        ch = chr(cp)
        decomposed = unicodedata.normalize("NFKD", ch)
        kept = "".join(c for c in decomposed if not _dropped(ord(c)))
        folded = kept.casefold()
        return "".join(self._confusables.get(c, c) for c in folded)


_TABLE = _FoldTable(load_confusables())


def _ranges_class(cps: list[int]) -> str:
    """A regex character class for sorted code points, as ranges."""
    parts: list[str] = []
    start = prev = cps[0]
    for cp in cps[1:] + [-1]:
        if cp == prev + 1:
            prev = cp
            continue
        parts.append(re.escape(chr(start)) + ("-" + re.escape(chr(prev)) if prev > start else ""))
        start = prev = cp
    return "[" + "".join(parts) + "]"


_TAGS = re.compile("[\U000e0000-\U000e007f]")


@dataclass(frozen=True, slots=True)
class _Passes:
    """Whole-string regex passes equivalent to the per-character table.

    Character classes are split into BMP and astral parts: `re` compiles a BMP-only class to a
    bitmap (O(1) per character) but an astral one to a list of ranges, so astral passes run only
    when the text has astral characters.
    """

    drop: re.Pattern[str]  # combining marks and invisible/format characters (BMP)
    drop_astral: re.Pattern[str]
    look_alike: re.Pattern[str]  # any confusable
    # Characters that do not fold to exactly one character (dropped marks, ligatures, Hangul
    # syllables, "ß"), and every astral one: elsewhere an offset moves one for one.
    uneven: re.Pattern[str]
    # Any BMP character that `drop` removes, that is a look-alike or casefolds to one: a text
    # without them (most Chinese and Japanese) skips the drop and look-alike passes, and the
    # structure layer's search for deceptive characters too (Folded.plain).
    suspect: re.Pattern[str]


def _tag(m: re.Match[str]) -> str:
    return _TABLE[ord(m.group())]


@cache
def _passes() -> _Passes:
    """Built once from the running Python's Unicode database (~0.3 s, on first non-ASCII text)."""
    drop = [cp for cp in range(sys.maxunicode + 1) if _dropped(cp)]
    uneven = [cp for cp in range(0x80, 0x10000) if len(_TABLE._fold(cp)) != 1]
    looks = _TABLE._confusables
    suspect = {cp for cp in drop if cp < 0x10000}
    suspect |= {ord(c) for k in looks for c in (k, k.upper()) if ord(c) < 0x10000}
    suspect |= {cp for cp in range(0x80, 0x10000) if any(c in looks for c in chr(cp).casefold())}
    return _Passes(
        # One character, not a run: a class with a repeat loses the regex engine's skip to the
        # first candidate character (33 us instead of 12 us to find nothing in 4 KB).
        drop=re.compile(_ranges_class([c for c in drop if c < 0x10000])),
        drop_astral=re.compile(_ranges_class([c for c in drop if c >= 0x10000]) + "+"),
        look_alike=re.compile(_ranges_class(sorted(ord(c) for c in _TABLE._confusables))),
        uneven=re.compile(_ranges_class(uneven)[:-1] + "\U00010000-\U0010ffff]"),
        suspect=re.compile(_ranges_class(sorted(suspect))),
    )


def has_astral(text: str) -> bool:
    """Whether `text` holds a character beyond the BMP: UTF-16 spends 4 bytes on those. A memcpy-
    speed encode, where a regex search costs ~3 ns a character (12 us on 4 KB)."""
    return len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text)


def fold_char(ch: str) -> str:
    return _TABLE[ord(ch)]


def fold(text: str) -> str:
    """The folded form of `text` (what patterns see)."""
    return _fold(text)[0]


def _fold(text: str) -> tuple[str, bool]:
    """The folded form of `text`, and whether the text was plain: no character that folding
    drops (marks, invisible and bidi controls, tags), no look-alike letter.

    Whole-string C operations (NFKD, one regex dropping combining marks and invisibles, casefold,
    look-alike replacement) give the same result as folding character by character (tested), at
    a fraction of the cost.
    """
    if text.isascii():
        return text.lower(), True
    p = _passes()
    out = unicodedata.normalize("NFKD", text)
    # Kana voicing marks are most of what NFKD leaves in Japanese (が -> か + U+3099): two C
    # replaces drop them faster than the regex.
    out = out.replace("\u3099", "").replace("\u309a", "")
    astral = has_astral(out)
    if not astral and p.suspect.search(out) is None:
        return out.casefold(), True  # one search instead of the drop and look-alike passes
    out = p.drop.sub("", out)
    if astral:
        out = p.drop_astral.sub("", out)
        out = _TAGS.sub(_tag, out)
    out = out.casefold()
    if p.look_alike.search(out) is not None:
        # Few distinct look-alikes in any real text: one C-speed replace per distinct one.
        for ch in set(p.look_alike.findall(out)):
            out = out.replace(ch, _TABLE._confusables[ch])
    return out, False


@dataclass(slots=True)
class Folded:
    """A prompt and its folded form, with a lazy map from folded offsets back to the original."""

    original: str
    text: str
    # No deceptive character in the original (none that folding drops, no look-alike): the
    # structure layer's Unicode signals have nothing to find.
    plain: bool = False
    _ends: list[int] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, original: str) -> Folded:
        return cls(original, *_fold(original))

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a folded span to the smallest original span that produced it."""
        if len(self.text) == len(self.original) and (self.original.isascii() or self.text == self.original):
            return start, end  # one character for one: offsets are the same
        if self._ends is None:
            self._ends = _folded_ends(self.original)
        ends = self._ends
        o_start = bisect.bisect_right(ends, start)
        o_end = bisect.bisect_left(ends, end) + 1 if end > 0 else 0
        return min(o_start, len(self.original)), min(max(o_end, o_start), len(self.original))


def _folded_ends(original: str) -> list[int]:
    """ends[i] = length of the folded text after original character i (non-decreasing).

    Most characters fold to exactly one: their lengths are 1 in a C-made list, and only the
    uneven ones (found by one regex scan) are looked up, so 4 KB of Japanese costs ~90 us
    instead of ~300 us for a per-character lookup.
    """
    lengths = [1] * len(original)
    for m in _passes().uneven.finditer(original):
        lengths[m.start()] = len(_TABLE[ord(m.group())])
    return list(itertools.accumulate(lengths))
