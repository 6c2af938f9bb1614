"""Engine counters for monitoring: updated by the step thread, read by others as a snapshot.

Only the step thread writes. Readers (a /metrics scrape on the event loop) take `snapshot()`, a
copy; a scrape that races a step may see one step's counters half-updated, which monitoring
tolerates and which keeps the hot path free of locks. Updating costs a few integer adds per step.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Upper bounds of the histograms' buckets (Prometheus' `le`); +Inf is implicit.
STEP_TIME_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STEP_TOKENS_BUCKETS = (1, 4, 16, 64, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(slots=True)
class Histogram:
    """Fixed buckets: `counts[i]` observations fell in (bounds[i-1], bounds[i]]; the last is +Inf."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)


@dataclass(slots=True)
class EngineStats:
    num_steps: int = 0
    # Prompt tokens computed, counted when a sequence samples its first token; prefix-cache hits are
    # not computed, and recomputation after a preemption is not counted again.
    prompt_tokens: int = 0
    generation_tokens: int = 0  # tokens sampled
    # Sequences that finished, by reason ("stop", "length", "abort").
    finished: dict[str, int] = field(default_factory=dict)
    step_time_s: Histogram = field(default_factory=lambda: Histogram(STEP_TIME_BUCKETS_S))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    step_tokens: Histogram = field(default_factory=lambda: Histogram(STEP_TOKENS_BUCKETS))
    # Filled in by snapshot() from the scheduler and block manager, which own these counts.
    num_preemptions: int = 0
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    energy_joules: float | None = None  # metered energy of all steps; None where no meter exists

    def record_step(self, elapsed_s: float, batch_size: int, num_tokens: int, num_sampled: int) -> None:
        self.num_steps += 1
        self.generation_tokens += num_sampled
        self.step_time_s.observe(elapsed_s)
        self.batch_size.observe(batch_size)
        self.step_tokens.observe(num_tokens)

    def record_finish(self, reason: str) -> None:
        self.finished[reason] = self.finished.get(reason, 0) + 1

    def copy(self) -> EngineStats:
        return EngineStats(
            num_steps=self.num_steps, prompt_tokens=self.prompt_tokens, generation_tokens=self.generation_tokens,
            finished=dict(self.finished), step_time_s=self.step_time_s.copy(), batch_size=self.batch_size.copy(),
            step_tokens=self.step_tokens.copy(), num_preemptions=self.num_preemptions,
            prefix_query_tokens=self.prefix_query_tokens, prefix_hit_tokens=self.prefix_hit_tokens,
            num_running=self.num_running, num_waiting=self.num_waiting, kv_cache_usage=self.kv_cache_usage,
            energy_joules=self.energy_joules,
        )

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0
