"""SampledMeter: a slow counter (NVML: milliseconds a read) sampled off the step path, read at once."""
from __future__ import annotations

from engine.energy_sampler import IDLE_AFTER_S, SampledMeter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingMeter:
    """A counter that a test scripts; counts its (expensive) reads."""
    kind, name = "nvml", "fake GPU"

    def __init__(self) -> None:
        self.joules, self.reads = 1000.0, 0

    def read_joules(self) -> float:
        self.reads += 1
        return self.joules


def test_reads_answer_from_samples_without_touching_the_counter() -> None:
    clock, meter = FakeClock(), CountingMeter()
    sampled = SampledMeter(meter, interval=0.1, clock=clock, start_thread=False)
    assert meter.reads == 1 and sampled.read_joules() == 1000.0
    for _ in range(5):  # the thread's samples: 300 W for 0.5 s
        clock.now += 0.1
        meter.joules += 30.0
        sampled.sample()
    assert sampled.read_joules() == 1150.0
    clock.now += 0.05  # between samples: extrapolated at the measured power
    assert abs(sampled.read_joules() - 1165.0) < 1e-9
    assert meter.reads == 6  # one at start, five by the "thread"; the steps' reads cost nothing


def test_answers_never_decrease_and_catch_up_with_the_counter() -> None:
    clock, meter = FakeClock(), CountingMeter()
    sampled = SampledMeter(meter, interval=0.1, clock=clock, start_thread=False)
    clock.now += 0.1
    meter.joules += 30.0
    sampled.sample()
    clock.now += 0.09
    overshoot = sampled.read_joules()  # 1030 + 300 W x 0.09 s
    assert abs(overshoot - 1057.0) < 1e-9
    clock.now += 0.01
    meter.joules += 10.0  # the GPU went quiet: the counter is below the extrapolation
    sampled.sample()
    assert sampled.read_joules() == overshoot  # held, never a negative step
    clock.now += 0.1
    meter.joules += 40.0
    sampled.sample()
    assert sampled.read_joules() == 1080.0  # the counter again


def test_a_read_after_an_idle_spell_samples_fresh_and_forgets_the_old_power() -> None:
    clock, meter = FakeClock(), CountingMeter()
    sampled = SampledMeter(meter, interval=0.1, clock=clock, start_thread=False)
    clock.now += 0.1
    meter.joules += 50.0
    sampled.sample()  # 500 W while busy
    clock.now += IDLE_AFTER_S + 5.0
    meter.joules += 200.0  # idle power, spent while nobody read
    reads = meter.reads
    assert sampled.read_joules() == 1250.0  # a synchronous fresh sample, not 1050 + 500 W x 6 s
    assert meter.reads == reads + 1
    clock.now += 0.05
    assert sampled.read_joules() == 1250.0  # no power known yet after the spell
