"""Pattern layer: run the compiled rules over one folded text.

The words of the text are collected once (tokens.py) so each rule's trigger prefilter is
a set lookup. Each rule is split into literal-led regexes (anchor.py); a scan visits only those
whose lead word or characters occur in the text, and tries each at the lead's few offsets (an
English lead, found by leads.py) or by its own literal-prefix search (a Chinese or Japanese one).
Matches per rule are capped, so a 100 KB input made of one phrase repeated costs a bounded number
of Python objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from security.anchor import Anchored
from security.leads import MIN_WALK, Leads
from security.rules import Rule
from security.tokens import Words

MAX_MATCHES_PER_RULE = 4
_NO_CHARS: frozenset[str] = frozenset()


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
    """The anchored regexes of a rule tuple keyed by what gates them, so a scan visits only the
    regexes whose lead word or lead character occurs in the text instead of all of them."""

    by_word: dict[str, tuple[tuple[int, Anchored], ...]]
    by_char: dict[str, tuple[tuple[int, Anchored], ...]]  # non-word leads, by first character
    # The same split in two, in by_char's order: an ASCII text visits only the few ASCII leads
    # (not all ~230, mostly CJK), and another text only the wide leads it contains.
    ascii_leads: tuple[tuple[str, tuple[tuple[int, Anchored], ...]], ...]
    wide_order: dict[str, int]
    # by_word's keys as a set: set & set walks the smaller side (a prompt's few words), where
    # set.intersection(dict) walks all ~300 keys (5 us a scan).
    word_keys: frozenset[str]
    generic: tuple[int, ...]  # rules with a generic regex
    # Every non-ASCII character any lead or trigger uses: the gates only ask about these, so a
    # text's character set is taken over them alone (cheap on 100 KB of random code points).
    relevant: re.Pattern[str]
    runs: re.Pattern[str]  # runs of the characters non-ASCII triggers are made of


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
    wide = {c for r in rules for sub in r.anchored for c in sub.wide}
    wide |= {c for r in rules for t in r.phrases for c in t if c >= "\x80"}
    relevant = re.compile("[" + "".join(sorted(re.escape(c) for c in wide)) + "]" if wide else "(?!)")
    glue = {c for r in rules for t in r.phrases if not t.isascii() for c in t}
    glue_class = "[" + "".join(sorted(re.escape(c) for c in glue)) + "]"
    # `[c][c]*+` rather than `[c]+`: a pattern that opens with a repeat loses the engine's skip
    # to the next candidate character.
    runs = re.compile(glue_class + glue_class + "*+" if glue else "(?!)")
    chars = {k: tuple(v) for k, v in by_char.items()}
    index = _Index({k: tuple(v) for k, v in by_word.items()}, chars,
                   tuple((k, v) for k, v in chars.items() if k < "\x80"),
                   {k: n for n, k in enumerate(chars) if k >= "\x80"}, frozenset(by_word),
                   tuple(i for i, r in enumerate(rules) if r.generic is not None), relevant, runs)
    _INDEXES[id(rules)] = (rules, index)
    return index


def _chars(folded: str, index: _Index) -> tuple[set[str], str | None]:
    """The text's characters, or on long text only those CJK leads and triggers use; and on a
    long text where those are sparse, its runs of trigger characters (joined by NUL), which the
    non-ASCII trigger searches then read instead of the whole text.

    `set(text)` is the cheaper call on a few KB or on CJK text (where most characters are
    relevant anyway); on 100 KB of other text (random code points: ~100 substring searches over
    100 KB of UCS-4 cost ~11 ms), one C-speed `findall` of the runs is."""
    if index.relevant.search(folded) is None:
        return set(), None  # accented Latin, Cyrillic...: no lead or trigger can be there
    if len(folded) <= 16384:
        return set(folded), None
    hay = "\x00".join(index.runs.findall(folded))
    if len(hay) > len(folded) // 4:
        return set(folded), None
    return set(hay) | set(index.relevant.findall(folded)), hay


def scan(folded: str, rules: tuple[Rule, ...], text_words: Words | None = None) -> list[Hit]:
    """Every regex rule of `rules` that matches `folded`, with up to a few spans each.
    `text_words`: Words.of(folded), when the caller has it."""
    if text_words is None:
        text_words = Words.of(folded)
    words = text_words.unique
    index = _index(rules)
    chars, hay = (_NO_CHARS, None) if folded.isascii() else _chars(folded, index)
    leads = Leads(folded)
    hits: list[Hit] = []
    found = [0] * len(rules)
    active: dict[int, bool] = {}
    seen: dict[str, bool] = {}

    def triggered(i: int) -> bool:
        ok = active.get(i)
        if ok is None:
            ok = active[i] = rules[i].triggered(words, folded, chars, seen, hay)
        return ok

    def run(i: int, sub: Anchored, at_leads: bool = True) -> None:
        """Collect the matches of `sub`, tried at its lead's positions (or by its own search)."""
        n = found[i]
        if n < MAX_MATCHES_PER_RULE:
            limit = MAX_MATCHES_PER_RULE - n
            where = leads.positions(sub.lead, sub.bounded) if at_leads else None
            found[i] = n + (_finditer(sub.regex, folded, rules[i], hits, limit) if where is None
                            else _match_at(sub.regex, folded, where, rules[i], hits, limit))

    # Word leads: which regexes will run is known first, so their leads are located in one walk.
    word_subs = [(i, sub) for word in words & index.word_keys for i, sub in index.by_word[word]
                 if sub.also <= words and triggered(i)]
    if len(word_subs) >= MIN_WALK:
        leads.locate_words({sub.lead for _, sub in word_subs if sub.bounded}, text_words)
    for i, sub in word_subs:
        run(i, sub)
    for ch, subs in index.ascii_leads:
        if ch in folded:
            for i, sub in subs:
                if sub.wide <= chars:
                    ok = active.get(i)
                    if ok or ok is None and triggered(i):
                        run(i, sub)
    if chars:
        # A CJK lead opens one or two regexes, not the dozen an English word like "you" opens:
        # the regex's own literal-prefix search beats finding its positions first (measured ~25
        # us less on 4 KB of Chinese or Japanese).
        order = index.wide_order
        for ch in sorted(chars.intersection(order), key=order.__getitem__):
            for i, sub in index.by_char[ch]:
                if sub.wide <= chars:
                    ok = active.get(i)  # most visits are for a rule already known: no call
                    if ok or ok is None and triggered(i):
                        run(i, sub, at_leads=False)
    for i in index.generic:
        rule = rules[i]
        if found[i] < MAX_MATCHES_PER_RULE and rule.triggered(words, folded, chars, seen, hay):
            _finditer(rule.generic, folded, rule, hits, MAX_MATCHES_PER_RULE - found[i])  # type: ignore[arg-type]
    return hits


def _match_at(regex: re.Pattern[str], text: str, where: list[int], rule: Rule, hits: list[Hit], limit: int) -> int:
    """The matches of `regex` at the offsets `where` (all offsets where it can match), skipping
    those inside the previous match as finditer would."""
    n = 0
    end = -1
    for pos in where:
        if pos < end:
            continue
        m = regex.match(text, pos)
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
