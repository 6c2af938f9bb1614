"""Structure layer: deceptive Unicode in the original text, and prompts that are JSON.

Unicode signals are read on the original characters (folding erases them). They target deception,
not the script: full-width punctuation in Chinese or a no-break space in French changes under NFKC
but is no signal here; a Cyrillic letter inside a Latin word, a zero-width space inside a word, a
tag character or a bidi override are. Pure-ASCII text skips all of it.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from security.normalize import has_astral, load_confusables
from security.rules import RuleSet

_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
# Greek mu is a unit prefix ("5μm"), not a disguise: folded, but no mixed-script signal.
_LOOKALIKE = "".join(
    sorted({c for k in load_confusables() for c in (k, k.upper()) if 0x370 <= ord(c) <= 0x52F} - {"μ", "Μ"})
)
_MIXED = re.compile(f"[{_LATIN}][{_LOOKALIKE}]|[{_LOOKALIKE}][{_LATIN}]")
_LOOKALIKE_ANY = re.compile(f"[{_LOOKALIKE}]")
_LATIN_ANY = re.compile(f"[{_LATIN}]")
_MANY_LOOKALIKES = 64
_LETTER = _LATIN + "\u0370-\u03ff\u0400-\u04ff\u3040-\u30ff\u4e00-\u9fff"
_INVISIBLE = "\u00ad\u034f\u180e\u200b-\u200d\u2060-\u2064\ufeff"
# A run of invisible characters between two letters, found from its first invisible character (a
# class the engine skips to: opened by the letter class, the regex was tried at every letter, ~70 us
# on 4 KB of Japanese). A span starts one character before the match, at the letter.
_INVIS_IN_WORD = re.compile(f"[{_INVISIBLE}](?<=[{_LETTER}][{_INVISIBLE}])[{_INVISIBLE}]*+(?=[{_LETTER}])")
_INVIS_ANY = re.compile(f"[{_INVISIBLE}]")
_TAG = re.compile("[\U000e0000-\U000e007f]")
# Subdivision flags (England, Scotland, Wales) are legitimate tag sequences.
_FLAG = re.compile("\U0001f3f4[\U000e0030-\U000e007a]{1,8}+\U000e007f")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_ENOUGH = 8
_SUSPICIOUS = re.compile(f"[\u202a-\u202e\u2066-\u2069{_INVISIBLE}{_LOOKALIKE}]")  # any of the three
_MANY_DECEPTIVE = 64


@dataclass(frozen=True, slots=True)
class Signal:
    rule_id: str
    weight: float
    start: int  # offsets in the original text
    end: int


def _counted(rules: RuleSet, rule_id: str, spans: list[tuple[int, int]]) -> list[Signal]:
    if not spans:
        return []
    rule = rules.by_id(rule_id)
    weight = rule.weight_many if rule.many and len(spans) >= rule.many else rule.weight
    start, end = spans[0]
    return [Signal(rule_id, weight, start, end)]


def unicode_signals(text: str, rules: RuleSet) -> list[Signal]:
    if text.isascii():
        return []
    has_tags = has_astral(text) and _TAG.search(text) is not None
    present = _deceptive_characters(text)
    if not has_tags and present is not None and not present:
        return []  # one bitmap scan clears ordinary French, Chinese and Japanese text
    out: list[Signal] = []
    if has_tags:
        if "\U0001f3f4" in text:
            if _TAG.search(_FLAG.sub("", text)) is not None:
                # Tags left once legitimate flag sequences are removed: report the first one.
                out += _counted(rules, "unicode.tag_chars", [_first_tag_outside_flags(text)])
        else:
            out += _counted(rules, "unicode.tag_chars", _spans(_TAG, text))
    if _any_of(_BIDI, present):
        out += _counted(rules, "unicode.bidi_control", _spans(_BIDI, text))
    if _any_of(_INVIS_ANY, present):
        out += _counted(rules, "unicode.invisible_in_word",
                        [(start - 1, end) for start, end in _spans(_INVIS_IN_WORD, text)])
    if _any_of(_LOOKALIKE_ANY, present):
        out += _counted(rules, "unicode.mixed_script", _mixed_words(text))
    return out


def _deceptive_characters(text: str) -> set[str] | None:
    """The distinct bidi controls, invisible characters and look-alikes of `text`, from one scan
    (each pass below would be another, ~15 us on 4 KB); None past _MANY_DECEPTIVE of them
    (Cyrillic or Greek text), when every pass runs."""
    found = [m.group() for m in itertools.islice(_SUSPICIOUS.finditer(text), _MANY_DECEPTIVE + 1)]
    return None if len(found) > _MANY_DECEPTIVE else set(found)


def _any_of(kind: re.Pattern[str], present: set[str] | None) -> bool:
    return present is None or any(kind.match(c) is not None for c in present)


def _spans(regex: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    # Counting stops at _ENOUGH: weights only step up at `many` (a small number).
    return [m.span() for m in itertools.islice(regex.finditer(text), _ENOUGH)]


def _first_tag_outside_flags(text: str) -> tuple[int, int]:
    covered = {i for m in _FLAG.finditer(text) for i in range(m.start(), m.end())}
    for m in _TAG.finditer(text):
        if m.start() not in covered:
            return m.span()
    return (0, 0)


def _mixed_starts(text: str) -> Iterator[int]:
    """Where `_MIXED.finditer(text)` matches (a Latin letter next to a look-alike, two characters),
    found from the look-alikes: `_MIXED` opens with a class the engine does not skip to, so it
    was tried at every character (~70 us on 4 KB of Japanese), while look-alikes are few outside
    Cyrillic and Greek text, which keeps the regex."""
    looks = [m.start() for m in itertools.islice(_LOOKALIKE_ANY.finditer(text), _MANY_LOOKALIKES + 1)]
    if len(looks) > _MANY_LOOKALIKES:
        yield from (m.start() for m in _MIXED.finditer(text))
        return
    latin = _LATIN_ANY.match
    free = 0  # finditer resumes after its last match
    for at in looks:
        if at >= 1 and at - 1 >= free and latin(text, at - 1) is not None:
            yield at - 1
            free = at + 1
        elif at >= free and latin(text, at + 1) is not None:
            yield at
            free = at + 2


def _mixed_words(text: str) -> list[tuple[int, int]]:
    """One span per distinct word that mixes Latin and look-alike letters (up to _ENOUGH)."""
    spans: list[tuple[int, int]] = []
    last_end = -1
    for start in _mixed_starts(text):
        if len(spans) >= _ENOUGH:
            break
        if start <= last_end:
            continue
        end = start + 2
        # Widen to the word, at most 64 characters each way (a span for the audit, not a parse).
        floor, ceiling = max(0, start - 64), min(len(text), end + 64)
        while start > floor and text[start - 1].isalpha():
            start -= 1
        while end < ceiling and text[end].isalpha():
            end += 1
        spans.append((start, end))
        last_end = end
    return spans


def json_signals(text: str, rules: RuleSet) -> list[Signal]:
    stripped = text.lstrip()
    if not stripped.startswith("{"):
        return []
    offset = len(text) - len(stripped)
    try:
        doc = json.loads(stripped)
    except (ValueError, RecursionError):
        rule = rules.by_id("json.invalid")
        return [Signal(rule.id, rule.weight, offset, offset + 1)]
    s = rules.settings
    suspicious = set(s["json_suspicious_keys"])
    safety = set(s["json_safety_keys"])
    off = set(s["json_off_values"])
    role_keys = set(s["json_role_keys"])
    privileged = set(s["json_privileged_roles"])
    fired: dict[str, str] = {}
    stack: list[object] = [doc]
    budget = int(s["json_max_nodes"])
    while stack and budget > 0:
        node = stack.pop()
        budget -= 1
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            k = str(key).strip().lower().replace("-", "_").replace(" ", "_")
            v = str(value).strip().lower() if isinstance(value, (str, bool, int, float)) else None
            if k in suspicious and value not in (False, None, "", 0):
                fired.setdefault("json.suspicious_key", key)
            if k in safety and v in off:
                fired.setdefault("json.safety_off", key)
            if k in role_keys and v in privileged:
                fired.setdefault("json.privileged_role", key)
            if isinstance(value, (dict, list)):
                stack.append(value)
    out = []
    for rule_id, key in fired.items():
        pos = text.find(json.dumps(key))
        start = pos if pos >= 0 else offset
        out.append(Signal(rule_id, rules.by_id(rule_id).weight, start, start + len(json.dumps(key))))
    return out
