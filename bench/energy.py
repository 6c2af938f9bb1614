"""Energy counters (GPU through NVML, CPU through RAPL) and kWh per million output tokens.

Each counter is a monotonic total in joules. A sampler thread reads every counter about every
100 ms during a run; afterwards the energy of any window is read off that timeline, so the
steady-state window (all requests running, see `windows.py`) can be chosen from the request records.

Rules (issue 7): GPU energy is NVML's total-energy counter, raw, idle not subtracted (idle power is
reported beside it). A window shorter than 5 s (the NVML counter moves about every 100 ms), or one
whose average power lies outside [idle, TDP], is marked unreliable. Where no counter can be read,
the result says "not measured" and why: never an estimate in a measurement's place.
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

MIN_WINDOW_S = 5.0
POWERCAP = Path("/sys/class/powercap")


class Counter(Protocol):
    name: str  # what it measures, for the report
    resolution_s: float  # how often the counter moves

    def read_joules(self) -> float: ...

    def tdp_w(self) -> float | None: ...


class NvmlCounter:
    """The summed total-energy counters (mJ) of the visible GPUs."""

    resolution_s = 0.1

    def __init__(self, nvml: object) -> None:
        self._nvml = nvml
        count = nvml.nvmlDeviceGetCount()
        if count < 1:
            raise RuntimeError("NVML sees no GPU")
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        names = [nvml.nvmlDeviceGetName(h) for h in self._handles]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.name = f"gpu: NVML total energy, {count} x {names[0]}"
        self.read_joules()  # fails here, not mid-run, on GPUs without the counter (pre-Volta)

    def read_joules(self) -> float:
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1e3

    def tdp_w(self) -> float | None:
        try:
            return sum(self._nvml.nvmlDeviceGetEnforcedPowerLimit(h) for h in self._handles) / 1e3
        except Exception:  # noqa: BLE001 - a missing limit only drops the upper bound check
            return None


class RaplCounter:
    """The package domains of /sys/class/powercap (intel-rapl:N, not their subzones, which the
    package already includes), with each domain's wrap-around undone."""

    resolution_s = 0.001

    def __init__(self, zones: list[Path]) -> None:
        self._zones = zones
        self._range = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self._last = [self._raw(z) for z in zones]
        self._total_uj = 0
        self.name = "cpu: RAPL " + ", ".join((z / "name").read_text().strip() for z in zones)

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def read_joules(self) -> float:
        for i, zone in enumerate(self._zones):
            now = self._raw(zone)
            delta = now - self._last[i]
            if delta < 0:  # the counter wrapped around
                delta += self._range[i] + 1
            self._total_uj += delta
            self._last[i] = now
        return self._total_uj / 1e6

    def tdp_w(self) -> float | None:
        total = 0.0
        for zone in self._zones:
            limit = zone / "constraint_0_max_power_uw"
            if not limit.exists():
                return None
            total += int(limit.read_text()) / 1e6
        return total or None


def open_nvml(import_nvml: Callable[[], object] | None = None) -> NvmlCounter | str:
    """The GPU counter, or the reason there is none. nvidia-ml-py is imported only here."""
    try:
        nvml = import_nvml() if import_nvml is not None else _import_pynvml()
    except ImportError:
        return "nvidia-ml-py (pynvml) is not installed"
    try:
        nvml.nvmlInit()
        return NvmlCounter(nvml)
    except Exception as exc:  # noqa: BLE001 - NVMLError and friends: no driver, no GPU, no counter
        return f"NVML unavailable: {type(exc).__name__}: {exc}"


def _import_pynvml() -> object:
    import pynvml

    return pynvml


def open_rapl(root: Path = POWERCAP) -> RaplCounter | str:
    """The CPU package counter, or the reason there is none."""
    if not root.is_dir():
        return f"no RAPL: {root} does not exist (no powercap driver, e.g. in a VM)"
    zones = sorted(z for z in root.glob("intel-rapl:*") if z.name.count(":") == 1)
    if not zones:
        return f"no RAPL package domain under {root}"
    try:
        return RaplCounter(zones)
    except PermissionError:
        return f"RAPL not readable: {zones[0] / 'energy_uj'} needs root (permission denied)"
    except (OSError, ValueError) as exc:
        return f"RAPL not readable: {exc}"


def open_counters(powercap: Path = POWERCAP,
                  import_nvml: Callable[[], object] | None = None) -> dict[str, Counter | str]:
    return {"gpu": open_nvml(import_nvml), "cpu": open_rapl(powercap)}


@dataclass(slots=True)
class Timeline:
    """(perf_counter, joules) readings of one counter, in time order."""

    times: list[float] = field(default_factory=list)
    joules: list[float] = field(default_factory=list)

    def at(self, t: float) -> float | None:
        """The counter at time t, linearly interpolated; None outside the sampled span."""
        if not self.times or t < self.times[0] or t > self.times[-1]:
            return None
        i = bisect_left(self.times, t)
        if self.times[i] == t or i == 0:
            return self.joules[i]
        t0, t1, j0, j1 = self.times[i - 1], self.times[i], self.joules[i - 1], self.joules[i]
        return j0 + (j1 - j0) * (t - t0) / (t1 - t0)


class Sampler:
    """Reads every available counter every `interval` seconds on a thread, while in a `with` block."""

    def __init__(self, counters: dict[str, Counter | str], interval: float = 0.1,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.counters = {k: c for k, c in counters.items() if not isinstance(c, str)}
        self.timelines = {k: Timeline() for k in self.counters}
        self._interval, self._clock = interval, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="energy-sampler", daemon=True)

    def sample(self) -> None:
        for key, counter in self.counters.items():
            now, joules = self._clock(), counter.read_joules()
            self.timelines[key].times.append(now)
            self.timelines[key].joules.append(joules)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        if self.counters:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()


def idle_power(counters: dict[str, Counter | str], seconds: float = 2.0) -> dict[str, float]:
    """Average watts of each counter over `seconds` with nothing sent: the idle baseline."""
    live = {k: c for k, c in counters.items() if not isinstance(c, str)}
    if not live:
        return {}
    start = {k: c.read_joules() for k, c in live.items()}
    t0 = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - t0
    return {k: (c.read_joules() - start[k]) / elapsed for k, c in live.items()}


def window_energy(counter: Counter | str, timeline: Timeline | None, start: float, end: float, tokens: float,
                  idle_w: float | None) -> dict:
    """The energy block of one device for a steady-state window [start, end] holding `tokens` tokens."""
    if isinstance(counter, str):
        return {"measured": False, "reason": counter}
    if end <= start:
        return {"measured": False, "reason": "no steady-state window (too few requests for the load)"}
    a = timeline.at(start) if timeline is not None else None
    b = timeline.at(end) if timeline is not None else None
    if a is None or b is None:
        return {"measured": False, "reason": "the window lies outside the sampled span"}
    if tokens <= 0:
        return {"measured": False, "reason": "no output tokens in the steady-state window"}
    seconds, joules = end - start, b - a
    avg_w, tdp = joules / seconds, counter.tdp_w()
    problems = []
    if seconds < max(MIN_WINDOW_S, counter.resolution_s):
        problems.append(f"window {seconds:.2f} s is shorter than {MIN_WINDOW_S:.0f} s")
    if idle_w is not None and avg_w < idle_w:
        problems.append(f"average power {avg_w:.1f} W is below idle {idle_w:.1f} W")
    if tdp is not None and avg_w > tdp:
        problems.append(f"average power {avg_w:.1f} W is above TDP {tdp:.1f} W")
    return {
        "measured": True, "counter": counter.name, "window_s": seconds, "joules": joules, "tokens": tokens,
        "avg_power_w": avg_w, "idle_power_w": idle_w, "tdp_w": tdp,
        "kwh_per_mtok": joules / 3.6e6 / (tokens / 1e6),  # raw: idle not subtracted
        "reliable": not problems, "unreliable_because": problems,
    }
