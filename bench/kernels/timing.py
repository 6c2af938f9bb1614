"""Timing shared by the kernel benchmarks."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def round_median(fn: Callable[[], object], min_time_s: float) -> float:
    """Median seconds per call over one round of at least 5 calls and min_time_s: the median
    resists stray slow calls on this shared machine."""
    times: list[float] = []
    deadline = time.perf_counter() + min_time_s
    while len(times) < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
