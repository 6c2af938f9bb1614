"""A slow energy counter read off the step path: a daemon thread samples it, steps read the estimate.

NVML's total-energy counter costs milliseconds a read (4-5 ms measured on an H200 host, 2026-11-27:
bench/gpu_engine_check.py's step profile), which is the whole of a batch-1 decode step, and its
value moves only every ~20-100 ms anyway. So a thread reads it every `interval` while the engine
reads it, and `read_joules()` answers at once: the last sample plus the recent power times the
time since that sample, never below what it answered before (the counter's contract: steps charge
differences, which must not be negative; an overshoot is absorbed by the next samples). The sum of
the steps' charges therefore follows the counter itself, within the last interval's extrapolation.
After an idle spell the thread has stopped and the first read samples synchronously, once.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from engine.energy import EnergyMeter

SAMPLE_INTERVAL_S = 0.1
POWER_WINDOW_S = 0.5  # power from samples this far apart: the counter moves in coarse steps
IDLE_AFTER_S = 1.0  # the thread stops sampling when no step has read the meter for this long


class SampledMeter:
    """An EnergyMeter over a slow one (see the module comment)."""

    def __init__(self, meter: EnergyMeter, interval: float = SAMPLE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, start_thread: bool = True) -> None:
        self.kind, self.name = meter.kind, meter.name
        self._meter, self._interval, self._clock = meter, interval, clock
        self._samples: deque[tuple[float, float]] = deque()  # (time, joules), oldest first
        self._estimate: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (time, joules, watts): one atomic swap
        self._answered = 0.0
        self._last_read = clock()
        self._wake = threading.Event()
        self._sampling = threading.Lock()  # the thread and a read after an idle spell may both sample
        self.sample()
        self._answered = self._estimate[1]
        if start_thread:
            threading.Thread(target=self._run, name="energy-sampler", daemon=True).start()

    def read_joules(self) -> float:
        now = self._clock()
        self._last_read = now
        t, joules, watts = self._estimate
        if now - t > 2 * self._interval + IDLE_AFTER_S:  # the thread is asleep: its data is stale
            self.sample(fresh=True)
            self._wake.set()
            t, joules, watts = self._estimate
        self._answered = max(self._answered, joules + watts * max(0.0, now - t))
        return self._answered

    def sample(self, fresh: bool = False) -> None:
        """One read of the slow counter; `fresh` forgets the power measured before an idle spell."""
        with self._sampling:
            now, joules = self._clock(), self._meter.read_joules()
            if fresh:
                self._samples.clear()
            self._samples.append((now, joules))
            while len(self._samples) > 2 and now - self._samples[1][0] >= POWER_WINDOW_S:
                self._samples.popleft()
            t0, j0 = self._samples[0]
            watts = (joules - j0) / (now - t0) if now > t0 else 0.0
            self._estimate = (now, joules, max(0.0, watts))

    def _run(self) -> None:
        while True:
            if self._clock() - self._last_read > IDLE_AFTER_S:
                self._wake.wait()
                self._wake.clear()
                continue
            time.sleep(self._interval)
            self.sample()
