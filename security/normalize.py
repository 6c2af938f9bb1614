"""Fold a prompt once into the text every rule matches against.

Folding = NFKD, drop combining marks, casefold, map look-alike letters (Cyrillic "а", Greek "ο")
to their Latin twins, drop invisible/format characters, and turn Unicode tag characters back into
the ASCII they smuggle. Rules are folded the same way, so "sуstème", "ＩＧＮＯＲＥ" and "i\u200bgnore"
all meet the plain patterns. Case and accents are gone after folding; patterns are written
accent-free and lower-case.

Speed: ASCII text (most prompts) folds with one `str.lower()`, offsets unchanged. Other text folds
by table look-up in C++ (csrc/security/fold_table.h): folding is a function of each character, so
the table is taught once per process what every BMP character and every astral one that changes
folds to, computed here by whole-string C operations over all of them (`_fold_whole`, tested
equal to the per-character `fold_char`), and one pass gives the folded text, whether it was plain
and the few characters that do not fold one for one (the offset map back to the original).
"""

from __future__ import annotations

import bisect
import json
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from security.native import Folder

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
_LATIN1_LOOK_ALIKES = any(ord(c) <= 0xFF for c in _TABLE._confusables)  # none in the shipped table


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


@dataclass(frozen=True, slots=True)
class _Passes:
    """Whole-string regex passes equivalent to the per-character table.

    Character classes are split into BMP and astral parts: `re` compiles a BMP-only class to a
    bitmap (O(1) per character) but an astral one to a list of ranges, so astral passes run only
    when the text has astral characters.
    """

    drop: re.Pattern[str]  # combining marks and invisible/format characters (BMP)
    # Astral characters folding drops (variation selectors, format controls) or maps (tags) ->
    # what they fold to; their class (a list of eight ranges walked at every character, ~35 us
    # on 4 KB); and two ranges that hold them all (historic scripts and symbols, then tags and
    # variation selectors), two tests a character: a text with none there (emoji, CJK
    # extensions) skips the astral pass.
    astral_folds: dict[str, str]
    astral: re.Pattern[str]
    astral_gate: re.Pattern[str]
    look_alike: re.Pattern[str]  # any confusable
    # Any BMP character that `drop` removes, that is a look-alike or casefolds to one: a text
    # without them (most Chinese and Japanese) skips the drop and look-alike passes, and the
    # structure layer's search for deceptive characters too (Folded.plain).
    suspect: re.Pattern[str]


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")  # any astral character: one range test each
_FEW_ASTRAL = 256


@cache
def _passes() -> _Passes:
    """Built once from the running Python's Unicode database (~0.3 s, on first non-ASCII text)."""
    drop = [cp for cp in range(sys.maxunicode + 1) if _dropped(cp)]
    looks = _TABLE._confusables
    suspect = {cp for cp in drop if cp < 0x10000}
    suspect |= {ord(c) for k in looks for c in (k, k.upper()) if ord(c) < 0x10000}
    suspect |= {cp for cp in range(0x80, 0x10000) if any(c in looks for c in chr(cp).casefold())}
    astral = sorted({c for c in drop if c >= 0x10000} | set(range(0xE0000, 0xE0080)))
    low, high = [cp for cp in astral if cp < 0xE0000], [cp for cp in astral if cp >= 0xE0000]
    gate = "".join(f"{chr(group[0])}-{chr(group[-1])}" for group in (low, high) if group)
    return _Passes(
        # One character, not a run: a class with a repeat loses the regex engine's skip to the
        # first candidate character (33 us instead of 12 us to find nothing in 4 KB).
        drop=re.compile(_ranges_class([c for c in drop if c < 0x10000])),
        astral_folds={chr(cp): _TABLE[cp] for cp in astral},
        astral=re.compile(_ranges_class(astral)),
        astral_gate=re.compile(f"[{gate}]"),
        look_alike=re.compile(_ranges_class(sorted(ord(c) for c in _TABLE._confusables))),
        suspect=re.compile(_ranges_class(sorted(suspect))),
    )


def _latin1(text: str) -> bool:
    """Whether every character of `text` is Latin-1, where the look-alike table has none: most
    French text once its accents are gone. An O(1) flag or a memcpy-speed encode, where the
    look-alike search reads every character (~15 us on 4 KB)."""
    if text.isascii():
        return True
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def has_astral(text: str) -> bool:
    """Whether `text` holds a character beyond the BMP: UTF-16 spends 4 bytes on those. A memcpy-
    speed encode, where a regex search costs ~3 ns a character (12 us on 4 KB)."""
    return len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text)


def fold_char(ch: str) -> str:
    return _TABLE[ord(ch)]


def fold(text: str) -> str:
    """The folded form of `text` (what patterns see)."""
    return text.lower() if text.isascii() else _folder().fold(text)[0]


def _fold_whole(text: str) -> tuple[str, bool]:
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
    astral = len(out.encode("utf-16-le", "surrogatepass")) // 2 - len(out)  # how many (has_astral)
    if not astral and p.suspect.search(out) is None:
        return out.casefold(), True  # one search instead of the drop and look-alike passes
    out = p.drop.sub("", out)
    if astral and p.astral_gate.search(out) is not None:
        folds = p.astral_folds
        # Few astral characters: visit each (one range test a character); many (random code
        # points): only the ones that fold.
        visit = _ASTRAL if astral <= _FEW_ASTRAL else p.astral
        out = visit.sub(lambda m: folds.get(m.group(), m.group()), out)
    out = out.casefold()
    if (_LATIN1_LOOK_ALIKES or not _latin1(out)) and p.look_alike.search(out) is not None:
        # Few distinct look-alikes in any real text: one C-speed replace per distinct one.
        for ch in set(p.look_alike.findall(out)):
            out = out.replace(ch, _TABLE._confusables[ch])
    return out, False


def _plain(piece: str, suspect: re.Pattern[str]) -> bool:
    # Not `isascii()` first: "I" is suspect in a text that is not ASCII (the upper case of the
    # dotless look-alike "ı").
    return not has_astral(piece) and suspect.search(piece) is None


_CHUNK = 0x10000


@cache
def _folder() -> Folder:
    """The native fold table, taught every BMP code point and the astral ones whose fold is not
    themselves (~2,600: tags, mathematical letters, cased scripts...; ~0.25 s once, beside the
    tables of _passes). Code points are folded NUL-separated, a plane at a time, in whole-string
    passes: NUL is a starter, so NFKD's reordering of marks never crosses it, and nothing folds to
    or from it. A plane that folds to itself (most astral ones) is skipped whole.

    A character is plain when its decomposition (less kana voicing marks, as _fold_whole
    drops them first) holds no astral character and nothing `suspect`."""
    suspect = _passes().suspect
    folder = Folder()
    bmp = range(1, _CHUNK)
    joined = "\x00".join(map(chr, bmp))
    decomposed = unicodedata.normalize("NFKD", joined).replace("\u3099", "").replace("\u309a", "")
    folder.teach([0, *bmp], ["\x00", *_fold_whole(joined)[0].split("\x00")],
                 [True, *(_plain(piece, suspect) for piece in decomposed.split("\x00"))])
    for low in range(_CHUNK, sys.maxunicode + 1, _CHUNK):
        plane = range(low, low + _CHUNK)
        joined = "\x00".join(map(chr, plane))
        folded = _fold_whole(joined)[0]
        if folded == joined:
            continue
        changed = [(cp, piece) for cp, piece in zip(plane, folded.split("\x00")) if piece != chr(cp)]
        folder.teach([cp for cp, _ in changed], [piece for _, piece in changed],
                     [_plain(unicodedata.normalize("NFKD", chr(cp)), suspect) for cp, _ in changed])
    return folder


@dataclass(slots=True)
class Folded:
    """A prompt and its folded form, with the map from folded offsets back to the original."""

    original: str
    text: str
    # No deceptive character in the original (none that folding drops, no look-alike): the
    # structure layer's Unicode signals have nothing to find.
    plain: bool = False
    _offsets: _Offsets | None = field(default=None, repr=False)  # None: ASCII, one for one

    @classmethod
    def of(cls, original: str) -> Folded:
        if original.isascii():
            return cls(original, original.lower(), True)
        text, plain, at, ends = _folder().fold(original)
        return cls(original, text, plain, _Offsets(at, ends, len(original)))

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a folded span to the smallest original span that produced it."""
        if self._offsets is None:
            return start, end
        count = self._offsets.count_upto
        o_start = count(start)
        o_end = count(end - 1) + 1 if end > 0 else 0
        return min(o_start, len(self.original)), min(max(o_end, o_start), len(self.original))


@dataclass(frozen=True, slots=True)
class _Offsets:
    """Where folded offsets fall in the original, kept only at the characters that do not fold to
    exactly one (the native fold lists them): between two of them every character folds to one.

    Let ends[i] be the length of the folded text after original character i (non-decreasing).
    A span maps back through counts of the i with ends[i] <= x; reading those off the few uneven
    characters costs two C bisections a span, where the whole table cost ~90 us to build on 4 KB
    of Japanese (a list as long as the text).
    """

    at: list[int]  # original index of each uneven character, ascending
    ends: list[int]  # ends[] at each of them
    size: int  # length of the original

    def count_upto(self, x: int) -> int:
        """How many original characters have ends[i] <= x (what bisect_right on the whole table
        gives): all up to the last uneven one at or below x, then one more per folded character
        until x or the next uneven one."""
        j = bisect.bisect_right(self.ends, x)
        following = self.at[j] if j < len(self.at) else self.size
        if j == 0:
            return min(x, following)
        return min(self.at[j - 1] + 1 + x - self.ends[j - 1], following)