"""`llmaas bench serve`: load levels against any OpenAI-compatible server, streaming.

Each level is a fixed concurrency (closed loop: c workers, each sending its next request when its
last one ends) or a Poisson arrival rate (open loop: requests go at seeded exponential gaps whatever
the server's state). Prompt and output lengths come from `bench.workload`'s distributions. Warm-up
requests go before each level and are not counted. A level ends after `num_requests` requests or,
with `duration`, when no request has been sent for that long (those in flight are awaited).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from bench.energy import Counter, Sampler, window_energy
from bench.progress import Progress
from bench.result import SCHEMA, level_entry, load_label, repeat_entry
from bench.serve_load import Connection, Target, chat_body, prompt_text
from bench.stats import Objective, RequestRecord, summarize
from bench.windows import steady_window, tokens_in_window
from bench.workload import LengthDist, RequestShape, poisson_arrivals, shape_stream


@dataclass(frozen=True)
class ServeSettings:
    base_url: str
    model: str
    loads: tuple[dict, ...]  # each {"concurrency": c} or {"rate": r}
    input_len: LengthDist
    output_len: LengthDist
    num_requests: int | None = 64
    duration: float | None = None  # seconds of sending; replaces num_requests
    warmup: int = 2
    repeats: int = 1
    seed: int = 0
    timeout: float = 600.0
    objective: Objective = Objective()
    api_key: str | None = None

    def describe(self) -> dict:
        d = asdict(self)
        d["input_len"], d["output_len"] = self.input_len.spec, self.output_len.spec
        d["mean_input_len"], d["mean_output_len"] = self.input_len.mean, self.output_len.mean
        d["api_key"] = "set" if self.api_key else None  # never the key itself in a result file
        return d


class Requests:
    """Encoded requests of one repeat, drawn as they are needed; the same seed gives the same shapes,
    and the tag (level, repeat, index) keeps every prompt distinct for the server's prefix cache."""

    def __init__(self, settings: ServeSettings, target: Target, tag: str) -> None:
        self._settings, self._target, self._tag = settings, target, tag
        self._shapes: Iterator[RequestShape] = shape_stream(settings.input_len, settings.output_len, settings.seed)
        self._index = itertools.count()

    def next(self) -> bytes:
        shape, i = next(self._shapes), next(self._index)
        body = chat_body(self._settings.model, prompt_text(f"{self._tag}-{i}", shape.input_len), shape.output_len)
        return self._target.request(body)


async def closed_loop(target: Target, requests: Requests, concurrency: int, count: int | None,
                      deadline: float | None, timeout: float, progress: Progress | None) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    sent = 0

    def take() -> bytes | None:
        nonlocal sent
        if (count is not None and sent >= count) or (deadline is not None and time.perf_counter() >= deadline):
            return None
        sent += 1
        return requests.next()

    async def worker() -> None:
        conn = Connection(target, timeout)
        try:
            while (request := take()) is not None:
                record = await conn.send(request)
                records.append(record)
                if progress is not None:
                    progress.update(record.error is None)
        finally:
            conn.close()

    workers = concurrency if count is None else min(concurrency, count)
    await asyncio.gather(*(worker() for _ in range(workers)))
    return records


async def open_loop(target: Target, requests: Requests, arrivals: list[float], timeout: float,
                    progress: Progress | None) -> list[RequestRecord]:
    """One connection per request (a Poisson client does not wait for a free connection)."""
    records: list[RequestRecord] = []
    start = time.perf_counter()

    async def one(request: bytes) -> None:
        conn = Connection(target, timeout)
        try:
            record = await conn.send(request)
        finally:
            conn.close()
        records.append(record)
        if progress is not None:
            progress.update(record.error is None)

    tasks = []
    for at in arrivals:
        request = requests.next()  # encoded before the wait, so the send is on time
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(request)))
    await asyncio.gather(*tasks)
    return records


async def run_repeat(settings: ServeSettings, target: Target, load: dict, repeat: int,
                     counters: dict[str, Counter | str], idle: dict[str, float], show_progress: bool) -> dict:
    (kind, value), = load.items()
    tag = f"{kind}{value:g}-r{repeat}"
    if settings.warmup:
        warm = Requests(settings, target, "warmup-" + tag)
        await closed_loop(target, warm, int(value) if kind == "concurrency" else 1, settings.warmup, None,
                          settings.timeout, None)
    total = settings.num_requests if settings.duration is None else None
    progress = Progress(f"{load_label(load)} #{repeat + 1}", total) if show_progress else None
    requests = Requests(settings, target, tag)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with Sampler(counters) as sampler:
        if kind == "concurrency":
            deadline = None if settings.duration is None else wall0 + settings.duration
            records = await closed_loop(target, requests, int(value), total, deadline, settings.timeout, progress)
        else:
            arrivals = poisson_arrivals(float(value), settings.seed + repeat, n=total, duration=settings.duration)
            records = await open_loop(target, requests, arrivals, settings.timeout, progress)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if progress is not None:
        progress.close()
    start, end = steady_window(records, int(value) if kind == "concurrency" else None)
    tokens = tokens_in_window(records, start, end)
    energy = {dev: window_energy(c, sampler.timelines.get(dev), start, end, tokens, idle.get(dev))
              for dev, c in counters.items()}
    summary = summarize(records, wall, settings.objective)
    return repeat_entry(summary, records, energy, cpu / wall)


async def run_serve(settings: ServeSettings, counters: dict[str, Counter | str], idle: dict[str, float],
                    show_progress: bool = True) -> list[dict]:
    target = Target.from_base_url(settings.base_url, settings.api_key)
    levels = []
    for load in settings.loads:
        repeats = [await run_repeat(settings, target, load, r, counters, idle, show_progress)
                   for r in range(settings.repeats)]
        levels.append(level_entry(load, repeats))
    return levels


def serve_document(settings: ServeSettings, levels: list[dict], provenance: dict,
                   idle: dict[str, float], counters: dict[str, Counter | str]) -> dict:
    return {
        "schema": SCHEMA, "kind": "serve", **provenance, "settings": settings.describe(), "levels": levels,
        "energy_counters": {dev: (c if isinstance(c, str) else c.name) for dev, c in counters.items()},
        "idle_power_w": idle,
        "left": ["per-request energy attribution: the engine's job (issue 7), not measured by the client",
                 "energy is the whole device's: meaningful only with the server on this machine"],
    }
