"""The steady-state window of a load level, found afterwards from its request records.

Energy per token is read over the window where the load is what the level says it is: not the
ramp-up (prompts still prefilling) nor the tail (workers running dry).

- Fixed concurrency c with N requests: from the moment the c-th request got its first token (all c
  running) to the (N-c+1)-th completion (the first one after which no new request is sent).
- Poisson arrivals: from the first token of the first request to the last send.

Failed requests count as completions: they free a worker just the same.
"""
from __future__ import annotations

from collections.abc import Sequence

from bench.stats import RequestRecord


def steady_window(records: Sequence[RequestRecord], concurrency: int | None) -> tuple[float, float]:
    """(start, end) in perf_counter seconds; end <= start when the level has no steady state."""
    if not records:
        return 0.0, 0.0
    first_tokens = sorted(r.start + r.ttft for r in records if r.error is None and r.output_tokens > 0)
    completions = sorted(r.start + r.e2e if r.error is None else r.start for r in records)
    if not first_tokens:
        return 0.0, 0.0
    if concurrency is None:
        return first_tokens[0], max(r.start for r in records)
    c = min(concurrency, len(records))
    if len(first_tokens) < c:
        return 0.0, 0.0
    return first_tokens[c - 1], completions[len(records) - c]


def tokens_in_window(records: Sequence[RequestRecord], start: float, end: float) -> float:
    """Output tokens produced in [start, end]: each content chunk carries its request's tokens
    spread evenly over its chunks (a chunk can hold several tokens)."""
    total = 0.0
    for r in records:
        times = r.content_times()
        if not times:
            continue
        per_chunk = r.output_tokens / len(times)
        total += per_chunk * sum(1 for t in times if start <= t <= end)
    return total
