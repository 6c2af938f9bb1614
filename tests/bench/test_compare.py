"""`bench compare`: ratios, and verdicts against the recorded run-to-run spread."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.compare import compare, compare_levels, load_docs, verdict
from bench.result import aggregate
from tests.bench.docs import doc


def test_verdict_by_direction_and_noise() -> None:
    assert verdict("output_tok_s", 100, 120, 0.05) == "better"
    assert verdict("output_tok_s", 100, 80, 0.05) == "worse"
    assert verdict("ttft_p99", 1.0, 0.8, 0.05) == "better"  # latency down is better
    assert verdict("ttft_p99", 1.0, 1.2, 0.05) == "worse"
    assert verdict("kwh_per_mtok_gpu", 1.0, 1.2, 0.05) == "worse"
    assert verdict("output_tok_s", 100, 104, 0.05) == "within noise"
    assert verdict("output_tok_s", 100, 120, 0.25) == "within noise"  # a noisy run hides 20%
    assert verdict("error_rate", 0.0, 0.1, 0.05) == "worse"


def test_spread_of_repeats_widens_the_noise_band() -> None:
    base = doc({8: [100.0, 100.0, 100.0]})["levels"][0]
    steady = doc({8: [112.0, 112.0, 112.0]})["levels"][0]
    noisy = doc({8: [90.0, 112.0, 135.0]})["levels"][0]  # spread (135 - 90) / 112 = 40%
    [cell] = compare_levels(base, steady, ("output_tok_s",), 0.05)
    assert (cell.ratio, cell.verdict) == (pytest.approx(1.12), "better")
    [cell] = compare_levels(base, noisy, ("output_tok_s",), 0.05)
    assert cell.noise == pytest.approx(45 / 112)
    assert cell.verdict == "within noise"


def test_aggregate_median_and_spread() -> None:
    reps = [{"metrics": {"a": v, "b": None if v == 3 else 1.0}} for v in (1.0, 3.0, 2.0)]
    median, spread = aggregate(reps)
    assert median == {"a": 2.0, "b": None}
    assert spread == {"a": 1.0, "b": None}


def test_compare_table_over_shared_levels(tmp_path: Path) -> None:
    a = tmp_path / "ours"
    a.mkdir()
    (a / "result.json").write_text(json.dumps(doc({1: [50.0], 32: [500.0]})))
    (tmp_path / "peer.json").write_text(json.dumps(doc({32: [200.0], 64: [210.0]}, ttft=0.4)))
    text = compare(load_docs([a, tmp_path / "peer.json"]))
    assert "## peer vs ours" in text
    assert "### c=32" in text and "### c=1" not in text and "### c=64" not in text
    assert "| output_tok_s | 500 | 200 | 0.400x | ±5.0% | worse |" in text
    assert "| ttft_p50 | 0.2 | 0.4 | 2.000x | ±5.0% | worse |" in text


def test_compare_rejects_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"schema": "other"}))
    (tmp_path / "y.json").write_text(json.dumps(doc({1: [1.0]})))
    with pytest.raises(ValueError, match="schema"):
        compare(load_docs([tmp_path / "y.json", tmp_path / "x.json"]))
    with pytest.raises(ValueError, match="at least two"):
        compare(load_docs([tmp_path / "y.json"]))


def test_runs_in_same_named_folders_get_told_apart(tmp_path: Path) -> None:
    for who in ("ours", "peer"):
        (tmp_path / who / "c32").mkdir(parents=True)
        (tmp_path / who / "c32" / "result.json").write_text(json.dumps(doc({32: [100.0]})))
    names = [n for n, _ in load_docs([tmp_path / "ours" / "c32", tmp_path / "peer" / "c32" / "result.json"])]
    assert names == ["ours/c32", "peer/c32"]
