"""One engine host as the gateway sees it: load, health and its circuit breaker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from gateway.fleet.backend import Backend


class LoadReport(msgspec.Struct):
    """What an engine answers at GET /internal/load."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_free_blocks: int
    num_blocks: int
    block_size: int
    # Tokens of work the engine holds: cached context of running sequences plus waiting prompts.
    num_pending_tokens: int


@dataclass(slots=True)
class HostState:
    backend: Backend
    kind: str  # "llmaas" or "openai"
    models: set[str] = field(default_factory=set)
    # Requests this gateway sent and that are not finished, and their estimated tokens.
    in_flight: int = 0
    outstanding_tokens: int = 0
    # The same, of the gateway's native lane (gateway/native_lane.py), as of its latest sync.
    lane_in_flight: int = 0
    lane_outstanding_tokens: int = 0
    picks: int = 0
    # Out of rotation until a health probe succeeds: after a failed probe or too many failures.
    healthy: bool = True
    consecutive_failures: int = 0
    last_error: str = ""
    report: LoadReport | None = None
    report_time: float = 0.0

    @property
    def name(self) -> str:
        return self.backend.name

    def load_tokens(self) -> int:
        """Outstanding work in tokens: ours, or the host's own report when it knows of more (other
        gateways, or requests we count as done that it still runs)."""
        reported = self.report.num_pending_tokens if self.report is not None else 0
        return max(self.outstanding_tokens + self.lane_outstanding_tokens, reported)

    def begin(self, tokens: int) -> None:
        self.in_flight += 1
        self.outstanding_tokens += tokens
        self.picks += 1

    def end(self, tokens: int) -> None:
        self.in_flight -= 1
        self.outstanding_tokens -= tokens

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def record_failure(self, error: str, threshold: int) -> None:
        self.consecutive_failures += 1
        self.last_error = error
        if self.consecutive_failures >= threshold:
            self.healthy = False

    def record_probe(self, report: LoadReport | None, error: str | None, threshold: int = 1) -> None:
        """A probe's outcome. A refused or failed probe takes the host out at once; a slow one
        (threshold > 1) only once it repeats, so that a host busy enough to answer late is not
        dropped from a fleet that needs it."""
        if error is not None:
            self.record_failure(error, threshold)
            return
        self.healthy = True
        self.consecutive_failures = 0
        if report is not None:
            self.report, self.report_time = report, time.monotonic()
