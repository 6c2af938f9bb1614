"""Energy meters the engine reads once per step, to charge each request its share of the energy.

A meter is a cumulative counter in joules from an arbitrary origin: NVML's total-energy counter of
the engine's GPU on CUDA, RAPL's CPU package counters (/sys/class/powercap) on CPU where they are
readable. Where neither exists (a VM, a container, RAPL readable by root only) there is no meter and
the source says why: the engine then reports no energy at all, never an estimate. The same rules as
the benchmark's counters (bench/energy.py), which measure windows of a run instead of engine steps.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

POWERCAP = Path("/sys/class/powercap")


class EnergyMeter(Protocol):
    kind: str  # "nvml" or "rapl"
    name: str  # what it measures, e.g. "NVIDIA H100 80GB HBM3" or "package-0, package-1"

    def read_joules(self) -> float:
        """The counter now: never decreasing, from an arbitrary origin."""
        ...


@dataclass(frozen=True, slots=True)
class EnergySource:
    meter: EnergyMeter | None
    detail: str  # what the meter measures, or why there is none

    @property
    def kind(self) -> str:
        return self.meter.kind if self.meter is not None else "none"


def unmetered(reason: str) -> EnergySource:
    return EnergySource(None, reason)


class NvmlMeter:
    """One GPU's total-energy counter (millijoules since the driver loaded)."""

    kind = "nvml"

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml, self._handle = nvml, handle
        name = nvml.nvmlDeviceGetName(handle)
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.read_joules()  # fails here, not mid-step, on GPUs without the counter (pre-Volta, MIG)

    def read_joules(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3


class RaplMeter:
    """The CPU package domains (intel-rapl:N; their subzones are inside them already), each domain's
    wraparound at max_energy_range_uj undone, summed."""

    kind = "rapl"

    def __init__(self, zones: list[Path]) -> None:
        self._energy_files = [z / "energy_uj" for z in zones]
        self._ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self._last = [int(f.read_text()) for f in self._energy_files]
        self._total_uj = 0
        self.name = ", ".join((z / "name").read_text().strip() for z in zones)

    def read_joules(self) -> float:
        for i, path in enumerate(self._energy_files):
            now = int(path.read_text())
            delta = now - self._last[i]
            if delta < 0:  # wrapped: the counter runs from 0 to its range, then starts at 0 again
                delta += self._ranges[i] + 1
            self._total_uj += delta
            self._last[i] = now
        return self._total_uj / 1e6


def open_rapl(root: Path = POWERCAP) -> EnergySource:
    if not root.is_dir():
        return unmetered(f"no RAPL: {root} does not exist (no powercap driver, e.g. in a VM)")
    # Package domains only: subzones (intel-rapl:0:0) sit inside their package, and a platform
    # domain (psys) includes the packages.
    zones = sorted(z for z in root.glob("intel-rapl:*") if z.name.count(":") == 1 and _zone_name(z) != "psys")
    if not zones:
        return unmetered(f"no RAPL package domain under {root}")
    try:
        meter = RaplMeter(zones)
    except PermissionError:
        return unmetered(f"RAPL not readable: {zones[0] / 'energy_uj'} needs root (permission denied)")
    except (OSError, ValueError) as exc:
        return unmetered(f"RAPL not readable: {exc}")
    return EnergySource(meter, f"RAPL {meter.name}")


def _zone_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""


def open_nvml(gpu_uuid: str, import_nvml: Callable[[], Any] | None = None) -> EnergySource:
    """The counter of the GPU with this NVML UUID ("GPU-..."); nvidia-ml-py is imported only here."""
    try:
        nvml = import_nvml() if import_nvml is not None else _import_pynvml()
    except ImportError:
        return unmetered("no NVML: nvidia-ml-py (pynvml) is not installed")
    try:
        nvml.nvmlInit()
        meter = NvmlMeter(nvml, nvml.nvmlDeviceGetHandleByUUID(gpu_uuid))
    except Exception as exc:  # noqa: BLE001 - NVMLError and friends: no driver, no GPU, no counter
        return unmetered(f"no NVML counter: {type(exc).__name__}: {exc}")
    return EnergySource(meter, f"NVML total energy of {meter.name}")


def _import_pynvml() -> Any:
    import pynvml

    return pynvml


def open_energy_source(device_type: str, gpu_uuid: str | None = None, powercap: Path = POWERCAP) -> EnergySource:
    """The meter for an engine on this device type: NVML for its GPU on CUDA (the CPU's RAPL would
    not measure the work), RAPL on CPU."""
    if device_type == "cuda":
        return open_nvml(gpu_uuid) if gpu_uuid else unmetered("no NVML: the GPU's UUID is unknown")
    if device_type == "cpu":
        return open_rapl(powercap)
    return unmetered(f"no energy counter for {device_type} devices")


class StepEnergy:
    """The energy of each engine step: one reading per step while the engine is busy, the previous
    step's reading as the next one's start; after the engine went idle, the next step takes a fresh
    start reading, so no request is charged the energy of the idle time before it."""

    def __init__(self, meter: EnergyMeter) -> None:
        self._meter = meter
        self._mark: float | None = None

    def start_step(self) -> None:
        if self._mark is None:
            self._mark = self._meter.read_joules()

    def end_step(self) -> float:
        """Joules since the step started (or the previous step ended)."""
        assert self._mark is not None, "start_step() comes first"
        now = self._meter.read_joules()
        joules, self._mark = now - self._mark, now
        return joules

    def idle(self) -> None:
        self._mark = None
