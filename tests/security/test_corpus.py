"""The development corpus is well formed and the layer meets the issue's goals on it."""

from __future__ import annotations

from collections import Counter

from bench.security.evaluate import CORPUS, evaluate_corpus, evaluate_fragments, load
import security

LANGS = {"en", "fr", "zh", "ja"}


def test_corpus_records_are_well_formed_and_ids_unique() -> None:
    ids: Counter[str] = Counter()
    for name in ("attacks.jsonl", "benign.jsonl", "multiturn.jsonl", "fragments.jsonl"):
        for rec in load(CORPUS / name):
            ids[rec["id"]] += 1
            assert rec["lang"] in LANGS and rec["label"] in ("attack", "benign")
            assert ("text" in rec) + ("messages" in rec) + ("parts" in rec) == 1
    assert max(ids.values()) == 1
    benign = load(CORPUS / "benign.jsonl")
    for lang in LANGS:
        assert sum(r["lang"] == lang for r in benign) >= 150


def test_goals_on_the_development_corpus() -> None:
    _, summary = evaluate_corpus(CORPUS)
    assert summary["fp"] <= 0.005
    assert summary["fragment_ratio"] >= 0.8
    per: dict[tuple[str, str], list[bool]] = {}
    for rec in load(CORPUS / "attacks.jsonl"):
        per.setdefault((rec["lang"], rec["category"]), []).append(security.check_text(rec["text"]).action != "allow")
    for (lang, cat), hits in per.items():
        goal = {"override": 0.9, "unicode": 0.98, "markup_exfil": 0.95, "hidden_html": 0.95, "jailbreak": 0.7}.get(cat, 0.8)
        assert sum(hits) / len(hits) >= goal, (lang, cat)
    structural = [r for r in load(CORPUS / "benign.jsonl") if r["category"] in ("json", "html", "markdown")]
    assert all(security.check_text(r["text"]).action == "allow" for r in structural)


def test_fragment_evaluation_uses_fresh_histories() -> None:
    lines, ratio = evaluate_fragments(CORPUS / "fragments.jsonl")
    assert ratio >= 0.8 and lines
