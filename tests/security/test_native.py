"""security._native against its pure-Python references: the literal automaton against one
`str.find` pass per literal, the fold table against the per-character fold, and whole verdicts
with the automaton against verdicts with the reference finder (action, score, rules in order,
every span) on the corpus, every rule example, the 100 KB adversarial inputs and seeded random
mixes."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator

import msgspec
import pytest

import security
from bench.security.adversarial import adversarial_inputs
from bench.security.evaluate import CORPUS, load
from security.literals import MAX_POSITIONS, LiteralSet
from security.native import Literals
from security.normalize import Folded, _fold_whole, fold, fold_char
from security.patterns import _index
from security.rules import default_rules

RULES = default_rules()
LITERALS = _index(RULES.pattern_rules).literals
ATOMS = sorted({w for r in RULES.rules for t in r.positive for w in t.split()[:8]})
PIECES = [" ", "\n", "\t", ".", "!", "\u200b", "\u202e", "\U000e0069", "\U000e0020", "а", "о", "ｉｇｎｏｒｅ", "# ", "// ",
          "```\n", "def f():\n", "x = 1;\n", "<!--", "-->", "指示", "忽略", "あなたの", "が", "한국", "é", "ß", "ﬁ", "😀",
          "\U0001d422", "\U0001f3f4\U000e0067\U000e0062\U000e007f", "ignore ", "you ", "Ｉ", "İ", "\u0301"]


def random_mixes(seed: int, count: int) -> Iterator[str]:
    """Rule vocabulary among invisible characters, look-alikes, tags, CJK, code comments, and now
    and then a flood of one word."""
    rng = random.Random(seed)
    for n in range(count):
        if n % 50 == 0:
            yield (rng.choice(ATOMS) + rng.choice([" ", "", "\n"])) * rng.randint(20, 2000)
            continue
        size = rng.randint(1, 60) if n % 10 else rng.randint(200, 1500)
        parts = [rng.choice(ATOMS) if rng.random() < 0.6 else rng.choice(PIECES) for _ in range(size)]
        yield rng.choice([" ", "", "\n"]).join(parts)


def corpus_texts() -> list[str]:
    records = [r for name in ("attacks.jsonl", "benign.jsonl", "multiturn.jsonl") for r in load(CORPUS / name)]
    texts = [r["text"] for r in records if "text" in r]
    texts += [m["content"] for r in records for m in r.get("messages", []) if isinstance(m.get("content"), str)]
    return texts + [t for r in RULES.rules for t in r.positive + r.negative]


def test_the_automaton_finds_what_one_pass_per_literal_finds() -> None:
    texts = corpus_texts() + list(adversarial_inputs().values()) + list(random_mixes(1, 1500))
    for text in texts:
        folded = fold(text)
        assert LITERALS.find(folded) == LITERALS.find_reference(folded), folded[:200]


def test_overlapping_astral_and_whole_word_occurrences() -> None:
    literals = LiteralSet(["aa", "a", "ab", "\U0001d422x", "指示"], whole_words=["ab"])
    text = "aaab ab-ab xab \U0001d422x指示指示"
    found = literals.find(text)
    assert found == literals.find_reference(text)
    assert found.starts["aa"] == [0, 1] and found.starts["a"] == [0, 1, 2, 5, 8, 12]
    assert found.starts["ab"] == [2, 5, 8, 12] and found.word_starts == {"ab": [5, 8]}
    assert found.starts["\U0001d422x"] == [15] and found.starts["指示"] == [17, 19]
    assert found.present == {"aa", "a", "ab", "\U0001d422x", "指示"}
    assert literals.find("") == literals.find_reference("") == literals.find("zzz")


def test_past_max_positions_a_flood_has_no_offsets() -> None:
    literals = LiteralSet(["ignore"], whole_words=["ignore"])
    flood = "ignore " * (MAX_POSITIONS + 1)
    assert literals.find(flood).starts == {"ignore": None} == literals.find(flood).word_starts
    assert literals.find("ignore " * MAX_POSITIONS).starts["ignore"] == list(range(0, 7 * MAX_POSITIONS, 7))
    assert literals.find("ignored " * 40).word_starts == {}


def test_the_automaton_refuses_empty_or_repeated_literals() -> None:
    with pytest.raises(ValueError):
        Literals(["a", ""], [False, False])
    with pytest.raises(ValueError):
        Literals(["a", "a"], [False, False])


def test_fold_equals_the_per_character_fold_on_every_bmp_character_and_astral_samples() -> None:
    every = "".join(map(chr, range(1, 0x10000))) + "".join(map(chr, range(0x10000, sys.maxunicode + 1, 7)))
    assert fold(every) == "".join(map(fold_char, every))


def test_fold_text_and_plain_flag_equal_the_whole_string_passes() -> None:
    for text in corpus_texts() + list(random_mixes(2, 2000)):
        folded = Folded.of(text)
        assert (folded.text, folded.plain) == _fold_whole(text), text[:200]


def _verdicts(texts: list[str]) -> list[object]:
    out = []
    for text in texts:
        out.append(msgspec.to_builtins(security.check_text(text)))
        half = len(text) // 2
        out.append(msgspec.to_builtins(security.check([{"role": "user", "content": text[:half]},
                                                       {"role": "tool", "content": text[half:]}])))
    return out


def test_verdicts_with_the_automaton_equal_verdicts_with_the_reference_finder(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = corpus_texts() + list(adversarial_inputs().values()) + list(random_mixes(3, 2000))
    native = _verdicts(texts)
    monkeypatch.setattr(LiteralSet, "find", LiteralSet.find_reference)
    assert _verdicts(texts) == native
