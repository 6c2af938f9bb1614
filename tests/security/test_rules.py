"""Every rule in the data files: its positive examples fire it, its near-miss negatives do not."""

from __future__ import annotations

import re
import tomllib

import pytest

import security
from security.normalize import fold
from security.patterns import scan
from security.rules import RULES_DIR, Rule, default_rules
from security.verdict import FLAG_AT

RULES = default_rules()
PATTERN_RULES = [r for r in RULES.rules if r.layer == "patterns"]
STRUCTURE_RULES = [r for r in RULES.rules if r.layer == "structure"]


def _ids(rules: list[Rule]) -> list[str]:
    return [r.id for r in rules]


def test_every_rule_file_is_versioned_and_every_rule_has_examples() -> None:
    files = sorted(RULES_DIR.glob("*.toml"))
    assert len(files) >= 6
    for path in files:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        assert re.fullmatch(r"\d{4}\.\d{2}\.\d{2}-\d+", data["version"]), path
    for rule in RULES.rules:
        assert rule.positive and rule.negative, rule.id
        assert 0 < rule.weight <= 1.0, rule.id
    assert len({r.id for r in RULES.rules}) == len(RULES.rules)


@pytest.mark.parametrize("rule", PATTERN_RULES, ids=_ids(PATTERN_RULES))
def test_pattern_rule_positive_fires(rule: Rule) -> None:
    for text in rule.positive:
        verdict = security.check_text(text)
        assert rule.id in verdict.rules, (rule.id, text, verdict)
        if rule.weight >= FLAG_AT:  # weak signals (below FLAG_AT) only count with others
            assert verdict.action != "allow"


@pytest.mark.parametrize("rule", PATTERN_RULES, ids=_ids(PATTERN_RULES))
def test_pattern_rule_near_miss_is_allowed(rule: Rule) -> None:
    for text in rule.negative:
        verdict = security.check_text(text)
        assert rule.id not in verdict.rules, (rule.id, text, verdict)
        assert verdict.action == "allow", (text, verdict)


@pytest.mark.parametrize("rule", STRUCTURE_RULES, ids=_ids(STRUCTURE_RULES))
def test_structure_rule_examples(rule: Rule) -> None:
    for text in rule.positive:
        assert rule.id in security.check_text(text).rules, (rule.id, text)
    for text in rule.negative:
        assert rule.id not in security.check_text(text).rules, (rule.id, text)


def test_split_regexes_match_exactly_where_the_full_regex_matches() -> None:
    # The anchored/generic split is a speed device: same answer as the rule's full regex on
    # every example of every rule (positives of one rule are near-misses of others).
    texts = [fold(t) for r in PATTERN_RULES for t in r.positive + r.negative]
    for rule in PATTERN_RULES:
        if rule.regex is None or rule.sentence_start:
            continue
        for text in texts:
            full = rule.regex.search(text) is not None
            split = any(h.rule.id == rule.id for h in scan(text, (rule,)))
            assert full == split, (rule.id, text)


def test_behaviour_rule_examples() -> None:
    frag = RULES.by_id("behaviour.fragmented")
    history = security.History()
    verdicts = [security.check_text(p, tenant="t", history=history) for p in frag.positive]
    assert "behaviour.fragmented" in verdicts[-1].rules
    history = security.History()
    verdicts = [security.check_text(p, tenant="t", history=history) for p in frag.negative]
    assert verdicts[-1].action == "allow"
    repeat = int(RULES.settings["repeat_threshold"])
    rule = RULES.by_id("behaviour.repeated_prompt")
    history = security.History()
    for _ in range(repeat - 1):
        assert rule.id not in security.check_text(rule.negative[0], tenant="t", history=history).rules
    assert rule.id in security.check_text(rule.positive[0], tenant="t", history=history).rules
