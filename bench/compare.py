"""`llmaas bench compare A.json B.json ...`: ratios against the first run, and a verdict per metric.

A metric's change is "within noise" when it is no larger than the run-to-run spread that either
run recorded for it (relative range over its repeats), and never smaller than `min_noise`: a
single repeat has no spread, yet still has noise. Outside that band it is "better" or "worse"
by the metric's direction (throughput up is better; latency, errors and energy down are better).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.result import HIGHER_IS_BETTER, check, load_label

DEFAULT_METRICS = ("output_tok_s", "req_s", "goodput_req_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99",
                   "tpot_p50", "tpot_p99", "e2e_p50", "e2e_p99", "kwh_per_mtok_gpu", "kwh_per_mtok_cpu")
MIN_NOISE = 0.05


@dataclass(frozen=True, slots=True)
class Cell:
    metric: str
    base: float
    other: float
    ratio: float  # other / base
    noise: float  # the relative band counted as noise
    verdict: str  # "better", "worse" or "within noise"


def verdict(metric: str, base: float, other: float, noise: float) -> str:
    if base == other:
        return "within noise"
    if base == 0:
        change = float("inf")
    else:
        change = other / base - 1.0
    if abs(change) <= noise:
        return "within noise"
    up_is_good = metric in HIGHER_IS_BETTER
    return "better" if (change > 0) == up_is_good else "worse"


def compare_levels(base: dict, other: dict, metrics: tuple[str, ...], min_noise: float) -> list[Cell]:
    cells = []
    for metric in metrics:
        a, b = base["median"].get(metric), other["median"].get(metric)
        if a is None or b is None:
            continue
        noise = max(min_noise, base["spread"].get(metric) or 0.0, other["spread"].get(metric) or 0.0)
        ratio = b / a if a else float("inf") if b else 1.0
        cells.append(Cell(metric, a, b, ratio, noise, verdict(metric, a, b, noise)))
    return cells


def _key(level: dict) -> tuple[str, float]:
    (k, v), = level["load"].items()
    return k, float(v)


def compare(docs: list[tuple[str, dict]], metrics: tuple[str, ...] = DEFAULT_METRICS,
            min_noise: float = MIN_NOISE) -> str:
    """Markdown: for each later run, a table per load level shared with the first run."""
    if len(docs) < 2:
        raise ValueError("compare needs at least two result files")
    for _, doc in docs:
        check(doc)
    base_name, base = docs[0]
    base_levels = {_key(level): level for level in base["levels"]}
    out = [f"# bench compare (baseline: {base_name})", ""]
    for name, doc in docs[1:]:
        shared = [(base_levels[_key(level)], level) for level in doc["levels"] if _key(level) in base_levels]
        out.append(f"## {name} vs {base_name}")
        out.append("")
        if not shared:
            out += ["No load level in common.", ""]
            continue
        for a, b in shared:
            out += [f"### {load_label(a['load'])}", "",
                    f"| metric | {base_name} | {name} | ratio | noise band | verdict |", "|---|---:|---:|---:|---:|---|"]
            for c in compare_levels(a, b, metrics, min_noise):
                out.append(f"| {c.metric} | {c.base:.4g} | {c.other:.4g} | {c.ratio:.3f}x | ±{100 * c.noise:.1f}% "
                           f"| {c.verdict} |")
            out.append("")
    return "\n".join(out)


def load_docs(paths: list[Path]) -> list[tuple[str, dict]]:
    """(name, document) per file; a run's folder may be given for its result.json. A result.json is
    named by its folder, and by its folder's parent too where that alone would not tell runs apart."""
    files = [p / "result.json" if p.is_dir() else p for p in paths]

    def name(file: Path, depth: int) -> str:
        if file.name != "result.json":
            return file.stem
        return "/".join(file.resolve().parent.parts[-depth:])

    names = [name(f, 1) for f in files]
    if len(set(names)) < len(names):
        names = [name(f, 2) for f in files]
    return [(n, json.loads(f.read_text())) for n, f in zip(names, files)]
