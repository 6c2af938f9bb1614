"""Injectable wall clock: every time-dependent rule (limits, expiry, lifecycle) reads one of these."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    __slots__ = ()

    # time.time itself, not a method calling it: read ~7 times a request, a Python frame each.
    time = staticmethod(time.time)


class FakeClock:
    """A clock that only moves when told to: tests of limits and dates stay deterministic."""

    __slots__ = ("_now", "_lock")

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self._now = now
        self._lock = threading.Lock()

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        with self._lock:
            self._now = now
