"""Statistics for the serving load generator: pure functions over per-request records.

Latencies are in seconds. A request that failed carries `error` and counts only in the error tally.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

PERCENTILES = (50.0, 90.0, 99.0)


@dataclass
class RequestRecord:
    """One request as the client saw it; times are from the request's own start."""

    ttft: float = 0.0  # until the first content delta
    e2e: float = 0.0  # until the stream ended
    itls: list[float] = field(default_factory=list)  # between consecutive content chunks
    output_tokens: int = 0  # usage.completion_tokens: a chunk may hold several tokens
    prompt_tokens: int = 0  # usage.prompt_tokens, to check the prompts' length
    error: str | None = None  # the kind of failure, None on success
    start: float = 0.0  # perf_counter when the request was sent: places its tokens in an energy window

    def content_times(self) -> list[float]:
        """perf_counter readings of each content chunk (the first at start + ttft)."""
        if self.error is not None or self.output_tokens == 0:
            return []
        times = [self.start + self.ttft]
        for gap in self.itls:
            times.append(times[-1] + gap)
        return times

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first; None when there is no second token to time."""
        if self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Distribution:
    p50: float
    p90: float
    p99: float
    mean: float
    max: float


@dataclass(frozen=True)
class Summary:
    completed: int
    errors: dict[str, int]
    duration: float
    request_throughput: float  # completed requests per second of wall time
    output_throughput: float  # output tokens of completed requests per second of wall time
    mean_input_tokens: float  # of completed requests (0 with none), to check the prompts' length
    ttft: Distribution | None
    itl: Distribution | None
    tpot: Distribution | None
    e2e: Distribution | None
    goodput: float | None = None  # requests/s that met every latency objective; None without objectives


@dataclass(frozen=True)
class Objective:
    """A latency objective (seconds); a request is good when it meets every bound that is set."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in (self.ttft, self.tpot, self.e2e))

    def met_by(self, record: RequestRecord) -> bool:
        if record.error is not None:
            return False
        tpot = record.tpot
        return ((self.ttft is None or record.ttft <= self.ttft)
                and (self.tpot is None or tpot is None or tpot <= self.tpot)
                and (self.e2e is None or record.e2e <= self.e2e))


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0 <= p <= 100) by linear interpolation between closest ranks.

    The sorted values sit at ranks 0..n-1; the percentile is at rank p/100 * (n-1), interpolated
    linearly between the two values around it (numpy's default, "linear" method). So p0 is the
    minimum, p100 the maximum, and one value is every percentile of itself.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile {p} is outside [0, 100]")
    ordered = sorted(values)
    rank = p / 100.0 * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def distribution(values: Sequence[float]) -> Distribution | None:
    """None for no values, so that a level where everything failed still summarizes."""
    if not values:
        return None
    p50, p90, p99 = (percentile(values, p) for p in PERCENTILES)
    return Distribution(p50=p50, p90=p90, p99=p99, mean=sum(values) / len(values), max=max(values))


def summarize(records: Sequence[RequestRecord], duration: float, objective: Objective | None = None) -> Summary:
    """`duration` is the wall time of the whole level, from the first request sent to the last answer;
    goodput is computed only under an objective that sets at least one bound."""
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    ok = [r for r in records if r.error is None]
    errors = Counter(r.error for r in records if r.error is not None)
    tpots = [t for t in (r.tpot for r in ok) if t is not None]
    return Summary(
        completed=len(ok),
        errors=dict(sorted(errors.items())),
        duration=duration,
        request_throughput=len(ok) / duration,
        output_throughput=sum(r.output_tokens for r in ok) / duration,
        mean_input_tokens=sum(r.prompt_tokens for r in ok) / len(ok) if ok else 0.0,
        ttft=distribution([r.ttft for r in ok]),
        itl=distribution([itl for r in ok for itl in r.itls]),
        tpot=distribution(tpots),
        e2e=distribution([r.e2e for r in ok]),
        goodput=(sum(objective.met_by(r) for r in ok) / duration
                 if objective is not None and objective.is_set else None),
    )
