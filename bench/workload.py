"""Workloads: prompt and output length distributions, and Poisson arrival schedules, all seeded.

A length distribution is written as a spec string on the command line:

    128                a fixed length
    uniform:32-256     uniform over the integers 32..256, both included
    chat               the chat mix in bench/data/chat_mix.json (the "input" or "output" side)
    mix:FILE.json      another mix file of the same shape

The same seed gives the same lengths and the same arrival times on every run and machine, so two
runs (ours and a peer's) see the same workload.
"""
from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CHAT_MIX = Path(__file__).resolve().parent / "data" / "chat_mix.json"

Side = Literal["input", "output"]


@dataclass(frozen=True, slots=True)
class Bucket:
    weight: float
    lo: int
    hi: int  # included


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A mixture of uniform integer buckets; fixed and uniform are one-bucket mixtures."""

    spec: str  # as written by the user, for the report
    buckets: tuple[Bucket, ...]

    def sample(self, rng: random.Random) -> int:
        if len(self.buckets) == 1:
            b = self.buckets[0]
        else:
            b = rng.choices(self.buckets, weights=[b.weight for b in self.buckets])[0]
        return b.lo if b.lo == b.hi else rng.randint(b.lo, b.hi)

    @property
    def mean(self) -> float:
        total = sum(b.weight for b in self.buckets)
        return sum(b.weight * (b.lo + b.hi) / 2 for b in self.buckets) / total


def parse_length(spec: str, side: Side) -> LengthDist:
    """A length distribution from its spec; ValueError with the reason when the spec is bad."""
    text = spec.strip()
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise ValueError(f"length must be positive: {spec!r}")
        return LengthDist(spec, (Bucket(1.0, n, n),))
    if text.startswith("uniform:"):
        lo_s, sep, hi_s = text[len("uniform:"):].partition("-")
        if not sep or not lo_s.isdigit() or not hi_s.isdigit():
            raise ValueError(f"expected uniform:LO-HI, got {spec!r}")
        lo, hi = int(lo_s), int(hi_s)
        if not 1 <= lo <= hi:
            raise ValueError(f"uniform bounds must satisfy 1 <= LO <= HI: {spec!r}")
        return LengthDist(spec, (Bucket(1.0, lo, hi),))
    if text == "chat":
        return LengthDist(spec, load_mix(CHAT_MIX, side))
    if text.startswith("mix:"):
        return LengthDist(spec, load_mix(Path(text[len("mix:"):]), side))
    raise ValueError(f"unknown length distribution {spec!r} (N, uniform:LO-HI, chat or mix:FILE)")


def load_mix(path: Path, side: Side) -> tuple[Bucket, ...]:
    data = json.loads(path.read_text())
    rows = data.get(side)
    if not rows:
        raise ValueError(f"{path} has no {side!r} buckets")
    buckets = tuple(Bucket(float(r["weight"]), int(r["min"]), int(r["max"])) for r in rows)
    if any(b.weight <= 0 or not 1 <= b.lo <= b.hi for b in buckets):
        raise ValueError(f"{path}: every bucket needs weight > 0 and 1 <= min <= max")
    return buckets


@dataclass(frozen=True, slots=True)
class RequestShape:
    input_len: int
    output_len: int


def shape_stream(input_dist: LengthDist, output_dist: LengthDist, seed: int) -> Iterator[RequestShape]:
    """Endless request shapes; a duration-bound level takes as many as it sends."""
    # Separate streams for the two sides, so changing one distribution leaves the other's draws alone.
    rin, rout = random.Random(f"{seed}-input"), random.Random(f"{seed}-output")
    while True:
        yield RequestShape(input_dist.sample(rin), output_dist.sample(rout))


def request_shapes(n: int, input_dist: LengthDist, output_dist: LengthDist, seed: int) -> list[RequestShape]:
    return list(itertools.islice(shape_stream(input_dist, output_dist, seed), n))


def poisson_arrivals(rate: float, seed: int, *, n: int | None = None,
                     duration: float | None = None) -> list[float]:
    """Send times (seconds from the start) of a Poisson process at `rate` requests/s: the first `n`,
    or all those before `duration`. Gaps are exponential with mean 1/rate; the first request goes at 0
    so that a run starts loaded rather than waiting for its first draw."""
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"rate must be a positive finite number, got {rate}")
    if (n is None) == (duration is None):
        raise ValueError("give exactly one of n and duration")
    rng = random.Random(f"{seed}-arrivals")
    times = [0.0]
    while True:
        nxt = times[-1] + rng.expovariate(rate)
        if (n is not None and len(times) >= n) or (duration is not None and nxt >= duration):
            break
        times.append(nxt)
    return times[:n] if n is not None else times
