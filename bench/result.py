"""The result document of a bench run (JSON), its flat metrics and the spread of repeats.

    {"schema": SCHEMA, "kind": "serve" | "engine", "created", "machine", "versions", "git", "command",
     "settings": {...},
     "levels": [{"load": {"concurrency": 8} | {"rate": 2.0} | {"batch": 32},
                 "repeats": [{"metrics": {...}, "summary": {...}, "client_cpu", "energy": {...},
                              "samples": {"ttft": [...], "tpot": [...], "e2e": [...]}}],
                 "median": {...}, "spread": {...}}],
     "left": [what was not measured, and why]}

`median` is each metric's median over the repeats and `spread` its relative range over them,
(max - min) / median: `bench compare` uses it to tell a change from run-to-run noise.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict

from bench.stats import Distribution, RequestRecord, Summary

SCHEMA = "llmaas-bench/1"

# Higher is better for these; lower is better for every other metric.
HIGHER_IS_BETTER = frozenset({"req_s", "output_tok_s", "goodput_req_s"})
LATENCIES = ("ttft", "itl", "tpot", "e2e")
STATS = ("p50", "p90", "p99", "max")


def metrics(summary: Summary, energy: dict[str, dict], total: int) -> dict[str, float | None]:
    """The flat, comparable numbers of one repeat (latencies in seconds)."""
    out: dict[str, float | None] = {
        "req_s": summary.request_throughput,
        "output_tok_s": summary.output_throughput,
        "goodput_req_s": summary.goodput,
        "error_rate": (total - summary.completed) / total if total else 0.0,
    }
    for name in LATENCIES:
        dist: Distribution | None = getattr(summary, name)
        for stat in STATS:
            out[f"{name}_{stat}"] = None if dist is None else getattr(dist, stat)
    for device, block in energy.items():
        out[f"kwh_per_mtok_{device}"] = block.get("kwh_per_mtok") if block.get("measured") else None
    return out


def samples(records: Sequence[RequestRecord]) -> dict[str, list[float]]:
    """Per-request latencies for the CDF plots (ITL is left out: one value per token is too many)."""
    ok = [r for r in records if r.error is None]
    return {
        "ttft": [round(r.ttft, 6) for r in ok],
        "tpot": [round(t, 6) for t in (r.tpot for r in ok) if t is not None],
        "e2e": [round(r.e2e, 6) for r in ok],
    }


def repeat_entry(summary: Summary, records: Sequence[RequestRecord], energy: dict[str, dict],
                 client_cpu: float | None) -> dict:
    return {"metrics": metrics(summary, energy, len(records)), "summary": asdict(summary),
            "client_cpu": client_cpu, "energy": energy, "samples": samples(records)}


def aggregate(repeats: Sequence[dict]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """(median, spread) of each metric over the repeats; None where any repeat lacks the metric."""
    median: dict[str, float | None] = {}
    spread: dict[str, float | None] = {}
    for key in repeats[0]["metrics"]:
        values = [r["metrics"].get(key) for r in repeats]
        if any(v is None for v in values):
            median[key] = spread[key] = None
            continue
        mid = statistics.median(values)
        median[key] = mid
        spread[key] = (max(values) - min(values)) / abs(mid) if mid else 0.0
    return median, spread


def level_entry(load: dict, repeats: Sequence[dict]) -> dict:
    median, spread = aggregate(repeats)
    return {"load": load, "repeats": list(repeats), "median": median, "spread": spread}


def load_label(load: dict) -> str:
    (key, value), = load.items()
    return {"concurrency": f"c={value}", "rate": f"{value:g} req/s", "batch": f"batch {value}"}[key]


def check(doc: dict) -> None:
    """Raises ValueError when `doc` is not a result document this version can read."""
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} result (schema {doc.get('schema')!r})")
    for key in ("kind", "settings", "levels", "machine", "versions", "git"):
        if key not in doc:
            raise ValueError(f"result lacks {key!r}")
    for level in doc["levels"]:
        if len(level.get("load", {})) != 1 or not level.get("repeats"):
            raise ValueError("a level needs one load setting and at least one repeat")
        if set(level["median"]) != set(level["spread"]):
            raise ValueError("median and spread cover different metrics")
