"""engine.energy's meters against a temporary powercap tree and a fake NVML, and StepEnergy's readings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.energy import EnergySource, StepEnergy, open_energy_source, open_nvml, open_rapl


def zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = 1000) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


def test_rapl_sums_packages_and_undoes_wraparound(tmp_path: Path) -> None:
    p0 = zone(tmp_path, "intel-rapl:0", "package-0", 900)
    p1 = zone(tmp_path, "intel-rapl:1", "package-1", 10, max_uj=5000)
    core = zone(tmp_path, "intel-rapl:0:0", "core", 5)
    psys = zone(tmp_path, "intel-rapl:2", "psys", 7)
    source = open_rapl(tmp_path)
    assert source.meter is not None and source.kind == "rapl"
    assert source.detail == "RAPL package-0, package-1"
    assert source.meter.read_joules() == 0.0
    (p0 / "energy_uj").write_text("100\n")  # wrapped: 900 -> 1000 (its range) -> 0 -> 100 is +201 uJ
    (p1 / "energy_uj").write_text("60\n")  # +50 uJ
    (core / "energy_uj").write_text("999\n")  # inside package-0 already
    (psys / "energy_uj").write_text("999\n")  # the whole platform, packages included
    assert source.meter.read_joules() == pytest.approx(251e-6, abs=1e-15)
    (p0 / "energy_uj").write_text("50\n")  # wrapped again: +951 uJ
    assert source.meter.read_joules() == pytest.approx(1202e-6, abs=1e-15)


def test_rapl_reasons_when_unreadable(tmp_path: Path) -> None:
    assert open_rapl(tmp_path / "absent") == EnergySource(
        None, f"no RAPL: {tmp_path / 'absent'} does not exist (no powercap driver, e.g. in a VM)")
    assert open_rapl(tmp_path).detail == f"no RAPL package domain under {tmp_path}"
    z = zone(tmp_path, "intel-rapl:0", "package-0", 1)
    if os.geteuid() != 0:  # root reads anything: the permission case is only real for other users
        (z / "energy_uj").chmod(0)
        assert open_rapl(tmp_path).detail.endswith("needs root (permission denied)")
        (z / "energy_uj").chmod(0o644)
    (z / "max_energy_range_uj").write_text("garbage")
    source = open_rapl(tmp_path)
    assert source.meter is None and source.kind == "none" and source.detail.startswith("RAPL not readable")


class FakeNvml:
    """One GPU whose total-energy counter (mJ) the test moves."""

    def __init__(self, energy_mj: int, uuid: str = "GPU-1234") -> None:
        self.energy_mj, self.uuid = energy_mj, uuid

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid != self.uuid:
            raise RuntimeError(f"no GPU {uuid}")
        return "handle"

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return b"Fake H100"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        assert handle == "handle"
        return self.energy_mj


def test_nvml_reads_the_engines_gpu_in_joules() -> None:
    nvml = FakeNvml(5_000)
    source = open_nvml("GPU-1234", lambda: nvml)
    assert source.meter is not None and source.kind == "nvml"
    assert source.detail == "NVML total energy of Fake H100"
    assert source.meter.read_joules() == 5.0
    nvml.energy_mj = 7_250
    assert source.meter.read_joules() == 7.25
    assert open_nvml("GPU-other", lambda: nvml).detail == "no NVML counter: RuntimeError: no GPU GPU-other"


def test_nvml_missing_package_is_a_reason() -> None:
    def absent() -> object:
        raise ImportError("No module named 'pynvml'")

    assert open_nvml("GPU-1234", absent) == EnergySource(None, "no NVML: nvidia-ml-py (pynvml) is not installed")


def test_device_types_pick_their_meter(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "package-0", 1)
    assert open_energy_source("cpu", powercap=tmp_path).kind == "rapl"
    assert open_energy_source("cuda", None, powercap=tmp_path).detail == "no NVML: the GPU's UUID is unknown"
    assert open_energy_source("mps").detail == "no energy counter for mps devices"


class ScriptedMeter:
    kind, name = "fake", "scripted"

    def __init__(self, readings: list[float]) -> None:
        self.readings = readings
        self.reads = 0

    def read_joules(self) -> float:
        self.reads += 1
        return self.readings.pop(0)


def test_step_energy_reads_once_per_busy_step_and_skips_idle_time() -> None:
    meter = ScriptedMeter([10.0, 12.0, 15.0, 100.0, 101.5])
    steps = StepEnergy(meter)
    steps.start_step()
    assert steps.end_step() == 2.0
    steps.start_step()  # busy: the previous step's reading is this one's start
    assert steps.end_step() == 3.0 and meter.reads == 3
    steps.idle()  # 15 -> 100 passed while idle: charged to no one
    steps.start_step()
    assert steps.end_step() == 1.5 and meter.reads == 5
