"""Energy counters against fake sysfs folders and a fake NVML, the window rules, the steady window."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.energy import Sampler, Timeline, idle_power, open_nvml, open_rapl, window_energy
from bench.stats import RequestRecord
from bench.windows import steady_window, tokens_in_window


def _zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = 1000, max_power_uw: int | None = None) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    if max_power_uw is not None:
        (z / "constraint_0_max_power_uw").write_text(f"{max_power_uw}\n")
    return z


def test_rapl_sums_packages_skips_subzones_and_undoes_wraparound(tmp_path: Path) -> None:
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 900, max_power_uw=100_000_000)
    p1 = _zone(tmp_path, "intel-rapl:1", "package-1", 10, max_power_uw=50_000_000)
    sub = _zone(tmp_path, "intel-rapl:0:0", "core", 5)
    counter = open_rapl(tmp_path)
    assert not isinstance(counter, str)
    assert counter.name == "cpu: RAPL package-0, package-1"
    assert counter.read_joules() == 0.0
    (p0 / "energy_uj").write_text("100\n")  # wrapped: 900 -> 1000 (=range) -> 0 -> 100, i.e. +201 uJ
    (p1 / "energy_uj").write_text("60\n")  # +50 uJ
    (sub / "energy_uj").write_text("999\n")  # inside package-0 already: must not count
    assert counter.read_joules() == pytest.approx(251e-6)
    assert counter.tdp_w() == pytest.approx(150.0)


def test_rapl_not_measured_reasons(tmp_path: Path) -> None:
    assert "does not exist" in open_rapl(tmp_path / "absent")
    assert "no RAPL package domain" in open_rapl(tmp_path)
    z = _zone(tmp_path, "intel-rapl:0", "package-0", 1)
    if os.geteuid() != 0:  # root reads anything: the permission case is only real for other users
        (z / "energy_uj").chmod(0)
        assert "permission denied" in open_rapl(tmp_path)
    (z / "energy_uj").chmod(0o644)
    (z / "max_energy_range_uj").write_text("garbage")
    assert "not readable" in open_rapl(tmp_path)


class FakeNvml:
    """Two GPUs whose counters (mJ) the test moves."""

    def __init__(self, energy_mj: list[int], count: int | None = None, fail_init: bool = False) -> None:
        self.energy_mj, self.fail_init = energy_mj, fail_init
        self.count = len(energy_mj) if count is None else count

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"Fake H100"

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return self.energy_mj[h]

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return 700_000  # mW


def test_nvml_counter_sums_gpus_in_joules() -> None:
    fake = FakeNvml([1_000, 2_000])
    counter = open_nvml(lambda: fake)
    assert not isinstance(counter, str)
    assert counter.name == "gpu: NVML total energy, 2 x Fake H100"
    assert counter.read_joules() == pytest.approx(3.0)
    fake.energy_mj[1] += 5_500
    assert counter.read_joules() == pytest.approx(8.5)
    assert counter.tdp_w() == pytest.approx(1400.0)


def test_nvml_not_measured_reasons() -> None:
    def missing() -> object:
        raise ImportError("No module named 'pynvml'")

    assert open_nvml(missing) == "nvidia-ml-py (pynvml) is not installed"
    assert "Driver Not Loaded" in open_nvml(lambda: FakeNvml([0], fail_init=True))
    assert "no GPU" in open_nvml(lambda: FakeNvml([], count=0))


class StepCounter:
    """A counter that burns `watts` per tick of a fake clock."""

    name, resolution_s = "fake", 0.1

    def __init__(self, clock: list[float], watts: float, tdp: float | None = 500.0) -> None:
        self.clock, self.watts, self.tdp = clock, watts, tdp

    def read_joules(self) -> float:
        return self.clock[0] * self.watts

    def tdp_w(self) -> float | None:
        return self.tdp


def _timeline(watts: float, until: float) -> Timeline:
    times = [i * 0.1 for i in range(int(until * 10) + 1)]
    return Timeline(times, [t * watts for t in times])


def test_timeline_interpolates_inside_and_refuses_outside() -> None:
    tl = Timeline([0.0, 1.0, 3.0], [0.0, 10.0, 50.0])
    assert tl.at(0.5) == pytest.approx(5.0)
    assert tl.at(2.0) == pytest.approx(30.0)
    assert tl.at(3.0) == 50.0
    assert tl.at(-0.1) is None and tl.at(3.1) is None


def test_window_energy_in_kwh_per_million_tokens() -> None:
    counter = StepCounter([0.0], watts=200.0)
    block = window_energy(counter, _timeline(200.0, 20.0), 2.0, 12.0, tokens=5000, idle_w=50.0)
    assert block["measured"] and block["reliable"] and block["unreliable_because"] == []
    assert block["joules"] == pytest.approx(2000.0)
    assert block["avg_power_w"] == pytest.approx(200.0)
    # 2000 J / 5000 tokens = 0.4 J per token = 0.4 / 3.6e6 kWh, times a million tokens.
    assert block["kwh_per_mtok"] == pytest.approx(0.4 / 3.6)
    assert block["idle_power_w"] == 50.0  # reported beside, not subtracted


@pytest.mark.parametrize(("start", "end", "watts", "idle", "tdp", "why"), [
    (2.0, 6.0, 200.0, 50.0, 500.0, "shorter than 5 s"),
    (2.0, 12.0, 40.0, 50.0, 500.0, "below idle"),
    (2.0, 12.0, 600.0, 50.0, 500.0, "above TDP"),
])
def test_window_energy_marks_unreliable_windows(start: float, end: float, watts: float, idle: float,
                                                tdp: float, why: str) -> None:
    block = window_energy(StepCounter([0.0], watts, tdp), _timeline(watts, 20.0), start, end, 100, idle)
    assert block["measured"] and not block["reliable"]
    assert any(why in reason for reason in block["unreliable_because"])


def test_window_energy_not_measured_paths() -> None:
    counter = StepCounter([0.0], 100.0)
    assert window_energy("no RAPL here", None, 0, 10, 10, None) == {"measured": False, "reason": "no RAPL here"}
    assert "no steady-state window" in window_energy(counter, _timeline(100, 20), 5, 5, 10, None)["reason"]
    assert "outside the sampled span" in window_energy(counter, _timeline(100, 3), 1, 9, 10, None)["reason"]
    assert "no output tokens" in window_energy(counter, _timeline(100, 20), 1, 9, 0, None)["reason"]


def test_sampler_and_idle_power_read_fake_counters() -> None:
    clock = [0.0]

    def tick() -> float:
        clock[0] += 0.5
        return clock[0]

    counter = StepCounter(clock, watts=10.0)
    sampler = Sampler({"cpu": counter, "gpu": "nvidia-ml-py (pynvml) is not installed"}, clock=tick)
    assert list(sampler.counters) == ["cpu"]  # the reason is not a counter to read
    sampler.sample()
    sampler.sample()
    tl = sampler.timelines["cpu"]
    assert tl.times == [0.5, 1.0] and tl.joules == [5.0, 10.0]
    with Sampler({"gpu": "absent"}) as empty:
        pass
    assert empty.timelines == {}
    assert idle_power({"gpu": "absent"}, seconds=10.0) == {}  # nothing to wait for


def test_steady_window_closed_loop() -> None:
    # Two workers, four requests of 1 s each; the 3rd and 4th start as the 1st and 2nd end.
    recs = [RequestRecord(start=s, ttft=0.2, e2e=1.0, output_tokens=5, itls=[0.2] * 4) for s in (0.0, 0.1, 1.0, 1.1)]
    start, end = steady_window(recs, concurrency=2)
    assert start == pytest.approx(0.3)  # the second request's first token: both running
    assert end == pytest.approx(2.0)  # the third completion (N - c + 1 = 3rd): no request follows it
    # Chunks at start + 0.2, 0.4, ..., 1.0: one token each.
    assert tokens_in_window(recs, start, end) == 4 + 5 + 5 + 4
    # More workers than requests: the first one ends before the last one starts, no steady state.
    start8, end8 = steady_window(recs, concurrency=8)
    assert end8 <= start8
    assert steady_window([], 2) == (0.0, 0.0)


def test_steady_window_open_loop_and_failures() -> None:
    recs = [RequestRecord(start=0.0, ttft=0.5, e2e=2.0, output_tokens=2, itls=[1.0]),
            RequestRecord(start=1.5, error="http_503"),
            RequestRecord(start=3.0, ttft=0.1, e2e=0.5, output_tokens=1)]
    assert steady_window(recs, None) == (0.5, 3.0)  # first token to last send
    assert steady_window([RequestRecord(error="timeout")], 1) == (0.0, 0.0)
