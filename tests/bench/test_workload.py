"""Length distributions and the seeded Poisson schedule."""
from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from bench.workload import CHAT_MIX, parse_length, poisson_arrivals, request_shapes


def test_fixed_and_uniform_lengths() -> None:
    rng = random.Random(1)
    assert {parse_length("128", "output").sample(rng) for _ in range(20)} == {128}
    uniform = parse_length("uniform:3-6", "input")
    drawn = {uniform.sample(rng) for _ in range(400)}
    assert drawn == {3, 4, 5, 6}  # both ends included, nothing outside
    assert uniform.mean == 4.5


@pytest.mark.parametrize("spec", ["0", "uniform:5-2", "uniform:0-3", "uniform:4", "normal:3", "", "-5"])
def test_bad_specs_are_rejected_with_a_reason(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_length(spec, "input")


def test_chat_mix_comes_from_the_data_file() -> None:
    data = json.loads(CHAT_MIX.read_text())
    for side in ("input", "output"):
        dist = parse_length("chat", side)
        lo = min(b["min"] for b in data[side])
        hi = max(b["max"] for b in data[side])
        draws = [dist.sample(random.Random(i)) for i in range(300)]
        assert lo <= min(draws) and max(draws) <= hi
        assert len(set(draws)) > 50  # a mixture, not a constant
    short = parse_length("chat", "input")
    draws = [short.sample(random.Random(i)) for i in range(2000)]
    share_short = sum(d <= 64 for d in draws) / len(draws)
    assert share_short == pytest.approx(data["input"][0]["weight"], abs=0.05)


def test_mix_file_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "mix.json"
    good.write_text(json.dumps({"input": [{"weight": 1, "min": 7, "max": 7}], "output": []}))
    assert parse_length(f"mix:{good}", "input").sample(random.Random(0)) == 7
    with pytest.raises(ValueError, match="no 'output'"):
        parse_length(f"mix:{good}", "output")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"input": [{"weight": 0, "min": 7, "max": 9}]}))
    with pytest.raises(ValueError, match="weight"):
        parse_length(f"mix:{bad}", "input")


def test_request_shapes_are_seeded_and_sides_independent() -> None:
    a = parse_length("uniform:1-1000", "input")
    b = parse_length("uniform:1-1000", "output")
    assert request_shapes(50, a, b, seed=3) == request_shapes(50, a, b, seed=3)
    assert request_shapes(50, a, b, seed=3) != request_shapes(50, a, b, seed=4)
    # Changing the output distribution leaves the prompt lengths as they were.
    other = request_shapes(50, a, parse_length("9", "output"), seed=3)
    assert [s.input_len for s in other] == [s.input_len for s in request_shapes(50, a, b, seed=3)]


def test_poisson_schedule_is_seeded_with_the_asked_rate() -> None:
    times = poisson_arrivals(4.0, seed=7, n=4000)
    assert times == poisson_arrivals(4.0, seed=7, n=4000)
    assert times != poisson_arrivals(4.0, seed=8, n=4000)
    assert times[0] == 0.0 and times == sorted(times) and len(times) == 4000
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.06)
    # Exponential gaps: the standard deviation equals the mean (a fixed schedule would give 0).
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.1)


def test_poisson_schedule_by_duration() -> None:
    times = poisson_arrivals(50.0, seed=1, duration=20.0)
    assert max(times) < 20.0
    assert len(times) == pytest.approx(1000, rel=0.1)
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, seed=1, n=3)
    with pytest.raises(ValueError):
        poisson_arrivals(1.0, seed=1, n=3, duration=1.0)
