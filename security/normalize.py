"""Fold a prompt once into the text every rule matches against.

Folding = NFKD, drop combining marks, casefold, map look-alike letters (Cyrillic "а", Greek "ο")
to their Latin twins, drop invisible/format characters, and turn Unicode tag characters back into
the ASCII they smuggle. Rules are folded the same way, so "sуstème", "ＩＧＮＯＲＥ" and "i\u200bgnore"
all meet the plain patterns. Case and accents are gone after folding; patterns are written
accent-free and lower-case.

Speed: ASCII text (most prompts) folds with one `str.lower()`, offsets unchanged. Other text goes
through whole-string C operations (see fold). Offsets back to the original are only computed when a
rule matched, from a per-character table filled lazily (each code point folded once per process).
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


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
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


def _tag(m: re.Match[str]) -> str:
    return _TABLE[ord(m.group())]


@cache
def _passes() -> _Passes:
    """Built once from the running Python's Unicode database (~0.3 s, on first non-ASCII text)."""
    drop = [cp for cp in range(sys.maxunicode + 1) if _dropped(cp)]
    return _Passes(
        drop=re.compile(_ranges_class([c for c in drop if c < 0x10000]) + "+"),
        drop_astral=re.compile(_ranges_class([c for c in drop if c >= 0x10000]) + "+"),
        look_alike=re.compile(_ranges_class(sorted(ord(c) for c in _TABLE._confusables))),
    )


def fold_char(ch: str) -> str:
    return _TABLE[ord(ch)]


def fold(text: str) -> str:
    """The folded form of `text` (what patterns see).

    Whole-string C operations (NFKD, one regex dropping combining marks and invisibles, casefold,
    look-alike replacement) give the same result as folding character by character (tested), at
    a fraction of the cost.
    """
    if text.isascii():
        return text.lower()
    p = _passes()
    out = unicodedata.normalize("NFKD", text)
    out = p.drop.sub("", out)
    if _ASTRAL.search(out) is not None:
        out = p.drop_astral.sub("", out)
        out = _TAGS.sub(_tag, out)
    out = out.casefold()
    if p.look_alike.search(out) is not None:
        # Few distinct look-alikes in any real text: one C-speed replace per distinct one.
        for ch in set(p.look_alike.findall(out)):
            out = out.replace(ch, _TABLE._confusables[ch])
    return out


@dataclass(slots=True)
class Folded:
    """A prompt and its folded form, with a lazy map from folded offsets back to the original."""

    original: str
    text: str
    _ends: list[int] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, original: str) -> Folded:
        return cls(original, fold(original))

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a folded span to the smallest original span that produced it."""
        if len(self.text) == len(self.original) and (self.original.isascii() or self.text == self.original):
            return start, end  # one character for one: offsets are the same
        if self._ends is None:
            # _ends[i] = folded length after original character i (non-decreasing).
            # All-C map chain: ~0.1 us per character instead of a Python-level generator.
            self._ends = list(itertools.accumulate(map(len, map(_TABLE.__getitem__, map(ord, self.original)))))
        ends = self._ends
        o_start = bisect.bisect_right(ends, start)
        o_end = bisect.bisect_left(ends, end) + 1 if end > 0 else 0
        return min(o_start, len(self.original)), min(max(o_end, o_start), len(self.original))
