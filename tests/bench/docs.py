"""Result documents built from known records, for the report, plot and compare tests."""
from __future__ import annotations

from bench.result import SCHEMA, level_entry, repeat_entry
from bench.stats import Objective, RequestRecord, summarize

NOT_MEASURED = {"measured": False, "reason": "no counter in tests"}


def records(ttft: float, n: int = 4, tokens: int = 10) -> list[RequestRecord]:
    return [RequestRecord(ttft=ttft, e2e=ttft + 0.1 * (tokens - 1), itls=[0.1] * (tokens - 1), output_tokens=tokens,
                          prompt_tokens=20, start=float(i)) for i in range(n)]


def doc(throughputs: dict[int, list[float]], ttft: float = 0.2, energy: dict | None = None) -> dict:
    """A serve document: per concurrency, one repeat per duration giving that throughput."""
    levels = []
    for conc, rates in throughputs.items():
        reps = []
        for rate in rates:
            recs = records(ttft)
            tokens = sum(r.output_tokens for r in recs)
            reps.append(repeat_entry(summarize(recs, tokens / rate, Objective(ttft=0.5)), recs,
                                     energy or {"cpu": NOT_MEASURED}, 0.01))
        levels.append(level_entry({"concurrency": conc}, reps))
    return {"schema": SCHEMA, "kind": "serve", "created": "2026-11-27T12:00:00+00:00",
            "machine": {"cpu": "test", "cpus": 2, "gpus": [], "load_average": [0.1, 0.1, 0.1]},
            "versions": {}, "git": {"commit": "abc", "dirty": False}, "command": [],
            "settings": {"model": "m", "base_url": "http://x/v1", "input_len": "20", "mean_input_len": 20,
                         "output_len": "10", "mean_output_len": 10, "num_requests": 4, "duration": None,
                         "warmup": 0, "repeats": len(next(iter(throughputs.values()))), "seed": 0,
                         "objective": {"ttft": 0.5, "tpot": None, "e2e": None}},
            "levels": levels, "energy_counters": {"cpu": "no counter in tests"}, "idle_power_w": {}, "left": []}
