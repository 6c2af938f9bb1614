"""Split a rule's regex into literal-led regexes the engine can skip through quickly.

Python's `re` has no multi-literal search: a pattern that opens with `\\b(?:ignore|disregard|...)`
is tried at nearly every position. But a pattern that opens with one literal ("ignore...") is
searched for that literal first, at C speed. So each rule's expanded regex is rewritten as a union
of alternatives, leading groups distributed (`\\b(?:a|b)X` -> `\\baX`, `\\bbX`), and every
alternative that now opens with a literal becomes its own regex, run only when its literal occurs
in the text (a word-set lookup for whole ASCII words, else literals.py's one-pass search). The union
matches exactly where the original regex matches; alternatives without a literal lead stay in one
generic regex.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_ALTERNATIVES = 400  # past this a rule keeps its generic regex (compile time, memory)
_LITERAL = re.compile(r"(?:[^\\\[\](){}|.*+?^$]|\\[^A-Za-z0-9])+")
_WORD_END = re.compile(r"\\W|\\b|\\s")
_BOUNDED_AFTER = ("\\b", "\\W+", "\\s+")


@dataclass(frozen=True, slots=True)
class Anchored:
    key: str  # an ASCII word looked up in the text's word set, or a substring
    is_word: bool
    regex: re.Pattern[str]
    lead: str  # the literal every match starts with
    also: frozenset[str] = frozenset()  # further whole words every match contains
    # A whole-word lead that the regex bounds on both sides (\b before it; \b, \W+ or \s+ after
    # it): it can only match where the lead is one of the text's a-z words (tokens.py).
    bounded: bool = False


def _structure(source: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """(index, character, group depth after it) for each "(", ")" and "|" of a regex source from
    `start`, skipping escapes and character classes (a "]" right after "[" or "[^" is a member)."""
    depth = 0
    in_class = False
    i = start
    while i < len(source):
        c = source[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if source[i + 1:i + 2] == "]":
                i += 1
            elif source[i + 1:i + 3] == "^]":
                i += 2
        elif c in "()|":
            depth += {"(": 1, ")": -1, "|": 0}[c]
            yield i, c, depth
        i += 1


def split_top(source: str) -> list[str]:
    """The top-level alternatives of a regex source."""
    cuts = [i for i, c, depth in _structure(source) if c == "|" and depth == 0]
    bounds = [-1, *cuts, len(source)]
    return [source[a + 1:b] for a, b in zip(bounds, bounds[1:])]


def _group_end(source: str, open_at: int) -> int:
    """Index just past the ")" closing the group that opens at `open_at`, or -1."""
    return next((i + 1 for i, c, depth in _structure(source, open_at) if c == ")" and depth == 0), -1)


def _distribute(alt: str, depth: int = 0) -> list[str]:
    """Rewrite `\\b(?:a|b)rest` as [`\\barest`, `\\bbrest`], recursively, when the group is plain."""
    prefix = "\\b" if alt.startswith("\\b") else ""
    body = alt[len(prefix):]
    if depth > 4 or not body.startswith("(?:"):
        return [alt]
    end = _group_end(body, 0)
    if end < 0 or body[end:end + 1] in ("?", "*", "+", "{"):
        return [alt]
    inner, rest = body[3:end - 1], body[end:]
    out: list[str] = []
    for branch in split_top(inner):
        out.extend(_distribute(prefix + branch + rest, depth + 1))
    return out


_SEPARATOR = re.compile(r"(?:\\W|\\s)(?:\+\+|\*\+|\+|\*)|\\b|\(\?<!\\w.\)")


def _required_words(body: str) -> frozenset[str]:
    """Whole ASCII words the regex must match, read off its opening run of literals and
    separators ("you\\W++are\\W++(?:now|...)" -> {"you", "are"}): extra word-set checks that
    skip most tries of a common lead such as "you"."""
    words: set[str] = set()
    pos = 0
    bounded_before = True
    while pos < len(body):
        sep = _SEPARATOR.match(body, pos)
        if sep is not None:
            pos = sep.end()
            bounded_before = True
            continue
        lit = _LITERAL.match(body, pos)
        if lit is None:
            break
        pos = lit.end()
        after = _SEPARATOR.match(body, pos)
        quantified = body[pos:pos + 1] in ("?", "*", "+", "{")
        if quantified or not bounded_before or after is None:
            break
        text = _unescape(lit.group())
        if re.fullmatch(r"[a-z]+", text):
            words.add(text)
        bounded_before = True
    return frozenset(words)


def _optional_split(alt: str) -> list[str]:
    """Rewrite a lead whose last character is optional, `e-?mail`, as [`email`, `e-mail`], so
    both keep a long literal lead (with "e" alone, every "e" of a text was a candidate).

    Only when the optional character cannot start what follows it, so at most one of the two
    matches at any position and the hits are those of the original regex."""
    prefix = "\\b" if alt.startswith("\\b") else ""
    body = alt[len(prefix):]
    m = _LITERAL.match(body)
    if m is None or body[m.end():m.end() + 1] != "?" or body[m.end() + 1:m.end() + 2] in ("?", "+"):
        return [alt]
    literal = m.group()
    unit = 2 if len(literal) >= 2 and literal[-2] == "\\" and (len(literal) < 3 or literal[-3] != "\\") else 1
    head, optional, rest = literal[:-unit], literal[-unit:], body[m.end() + 1:]
    after = _LITERAL.match(rest)
    if not head or after is None or _unescape(after.group())[:1] == _unescape(optional):
        return [alt]
    return [prefix + head + rest, prefix + literal + rest]


def _unescape(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal)


def anchor(source: str) -> tuple[list[Anchored], str | None]:
    """Literal-led regexes for `source` and the generic remainder (None when nothing is left)."""
    alternatives = [o for alt in split_top(source) for d in _distribute(alt) for o in _optional_split(d)]
    if len(alternatives) > MAX_ALTERNATIVES:
        return [], source
    anchored: list[Anchored] = []
    generic: list[str] = []
    for alt in alternatives:
        boundary = alt.startswith("\\b")
        body = alt[2:] if boundary else alt
        m = _LITERAL.match(body)
        lead = _unescape(m.group()) if m else ""
        # A literal directly followed by a quantifier is not fully required: drop its last char.
        if m and body[m.end():m.end() + 1] in ("?", "*", "+", "{"):
            lead = lead[:-1]
        token = re.match(r"[a-z]+", lead)
        if not lead:
            generic.append(alt)
            continue
        if boundary and token is not None and token.group() == lead and body.startswith(lead):
            # The \b before the literal, checked once the whole lead is read (a lookbehind over
            # it), so the literal still leads the regex: where a scan runs `finditer` (a flood of
            # the lead), the engine skips to the whole lead, not to every one of its first letter.
            regex = re.compile(lead + r"(?<!\w.{%d})" % len(lead) + body[len(lead):])
        elif boundary and lead[0].isascii() and lead[0].isalnum():
            # The \b before the literal, checked after its first character (a lookbehind) so the
            # literal still leads the regex.
            regex = re.compile(body[0] + r"(?<!\w" + re.escape(body[0]) + ")" + body[1:])
        else:
            regex = re.compile(alt)
        whole_word = (token is not None and token.group() == lead
                      and _WORD_END.match(body, m.end()) is not None)
        key = token.group() if whole_word and token is not None else lead
        bounded = boundary and whole_word and body.startswith(_BOUNDED_AFTER, m.end())
        anchored.append(Anchored(key, whole_word, regex, lead, _required_words(body), bounded))
    return anchored, ("|".join(generic) if generic else None)
