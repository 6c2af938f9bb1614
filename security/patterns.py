"""Pattern layer: run the compiled rules over one folded text.

The words of the text are collected once (tokens.py) and every rule literal that occurs in it
(regex leads, trigger phrases) is found in one pass (literals.py), so each rule's trigger
prefilter is a set lookup. Each rule is split into literal-led regexes (anchor.py); a scan visits
only those whose lead occurs in the text and tries each at the lead's few offsets. Matches per
rule are capped, so a 100 KB input made of one phrase repeated costs a bounded number of Python
objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from security.anchor import Anchored
from security.literals import LiteralSet
from security.rules import Rule
from security.tokens import Words

MAX_MATCHES_PER_RULE = 4


@dataclass(frozen=True, slots=True)
class Hit:
    rule: Rule
    start: int  # offsets in the folded text
    end: int


_OPENER = re.compile(r"(?:\W*+(?:please|now|so|just|ok|okay|then)\b)*+\W*+\Z")
_SENTENCE_END = frozenset(".!?;:\n>)]\"'`*#-")


def at_sentence_start(text: str, pos: int) -> bool:
    """Whether `pos` opens a sentence: only spaces, punctuation and openers ("please", "now")
    since the start of the text or a sentence end. Looks back 40 characters at most."""
    low = max(0, pos - 40)
    window = text[low:pos]
    m = _OPENER.search(window)  # always matches, at worst empty at the end
    start = m.start() if m is not None else len(window)
    if any(c in _SENTENCE_END for c in window[start:]):
        return True
    return start == 0 and low == 0


@dataclass(frozen=True, slots=True)
class _Index:
    """The anchored regexes of a rule tuple keyed by their lead, so a scan visits only the
    regexes whose lead occurs in the text instead of all of them."""

    by_word: dict[str, tuple[tuple[int, Anchored], ...]]
    # by_word's keys as a set: set & set walks the smaller side (a prompt's few words), where
    # set.intersection(dict) walks all ~300 keys (5 us a scan).
    word_keys: frozenset[str]
    # Leads that are not whole words -> (visit order, rule, regex): ASCII-led first, then the
    # others, each by first character in rule order (the order hits, and so a verdict's rules,
    # have always come in).
    by_lead: dict[str, tuple[tuple[int, int, Anchored], ...]]
    lead_keys: frozenset[str]
    generic: tuple[int, ...]  # rules with a generic regex
    literals: LiteralSet  # every lead and trigger phrase


_INDEXES: dict[int, tuple[tuple[Rule, ...], _Index]] = {}


def _index(rules: tuple[Rule, ...]) -> _Index:
    cached = _INDEXES.get(id(rules))
    if cached is not None and cached[0] is rules:
        return cached[1]
    by_word: dict[str, list[tuple[int, Anchored]]] = {}
    by_char: dict[str, list[tuple[int, Anchored]]] = {}
    for i, rule in enumerate(rules):
        for sub in rule.anchored:
            if sub.is_word:
                by_word.setdefault(sub.key, []).append((i, sub))
            else:
                by_char.setdefault(sub.lead[0], []).append((i, sub))
    ordered = [x for ascii_first in (True, False) for ch, subs in by_char.items()
               if (ch < "\x80") == ascii_first for x in subs]
    by_lead: dict[str, list[tuple[int, int, Anchored]]] = {}
    for n, (i, sub) in enumerate(ordered):
        by_lead.setdefault(sub.lead, []).append((n, i, sub))
    leads = {sub.lead for r in rules for sub in r.anchored}
    phrases = {p for r in rules for p in r.phrases}
    literals = LiteralSet(leads | phrases, {sub.lead for r in rules for sub in r.anchored if sub.bounded})
    index = _Index({k: tuple(v) for k, v in by_word.items()}, frozenset(by_word),
                   {k: tuple(v) for k, v in by_lead.items()}, frozenset(by_lead),
                   tuple(i for i, r in enumerate(rules) if r.generic is not None), literals)
    _INDEXES[id(rules)] = (rules, index)
    return index


def scan(folded: str, rules: tuple[Rule, ...], text_words: Words | None = None) -> list[Hit]:
    """Every regex rule of `rules` that matches `folded`, with up to a few spans each.
    `text_words`: Words.of(folded), when the caller has it."""
    if text_words is None:
        text_words = Words.of(folded)
    words = text_words.unique
    index = _index(rules)
    found = index.literals.find(folded)
    phrases = found.present
    hits: list[Hit] = []
    counts = [0] * len(rules)
    active: dict[int, bool] = {}

    def triggered(i: int) -> bool:
        ok = active.get(i)
        if ok is None:
            ok = active[i] = rules[i].triggered(words, phrases)
        return ok

    def run(i: int, sub: Anchored, n: int) -> None:
        """Collect the matches of `sub` (rule i has n so far), tried at its lead's offsets (all
        of them, or past literals.MAX_POSITIONS by the regex's own search)."""
        where = found.positions(sub.lead, sub.bounded)
        limit = MAX_MATCHES_PER_RULE - n
        counts[i] = n + (_finditer(sub.regex, folded, rules[i], hits, limit) if where is None
                         else _match_at(sub.regex, folded, where, rules[i], hits, limit))

    # A rule that has all its matches skips its other regexes before any prefilter.
    for word in words & index.word_keys:
        for i, sub in index.by_word[word]:
            n = counts[i]
            if n < MAX_MATCHES_PER_RULE and sub.also <= words and triggered(i):
                run(i, sub, n)
    by_lead = index.by_lead
    for _, i, sub in sorted(x for lead in phrases & index.lead_keys for x in by_lead[lead]):
        n = counts[i]
        if n < MAX_MATCHES_PER_RULE:
            ok = active.get(i)  # most visits are for a rule already known: no call
            if ok or ok is None and triggered(i):
                run(i, sub, n)
    for i in index.generic:
        rule = rules[i]
        if counts[i] < MAX_MATCHES_PER_RULE and rule.triggered(words, phrases):
            _finditer(rule.generic, folded, rule, hits, MAX_MATCHES_PER_RULE - counts[i])  # type: ignore[arg-type]
    return hits


def _match_at(regex: re.Pattern[str], text: str, where: list[int], rule: Rule, hits: list[Hit], limit: int) -> int:
    """The matches of `regex` at the offsets `where` (all offsets where it can match), skipping
    those inside the previous match as finditer would."""
    n = 0
    end = -1
    match = regex.match  # bound once: most offsets of a dense text are tried and fail
    for pos in where:
        if pos < end:
            continue
        m = match(text, pos)
        if m is not None and (not rule.sentence_start or at_sentence_start(text, m.start())):
            hits.append(Hit(rule, m.start(), m.end()))
            end = m.end()
            n += 1
            if n == limit:
                break
    return n


def _finditer(regex: re.Pattern[str], text: str, rule: Rule, hits: list[Hit], limit: int) -> int:
    n = 0
    for m in regex.finditer(text):
        if rule.sentence_start and not at_sentence_start(text, m.start()):
            continue
        hits.append(Hit(rule, m.start(), m.end()))
        n += 1
        if n == limit:
            break
    return n
