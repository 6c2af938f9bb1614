"""`llmaas bench engine`: the offline engine (no HTTP) on the same workloads as `bench serve`.

Per batch size b it keeps b requests in the engine (closed loop, as `bench serve` does at
concurrency b): when one finishes the next is added, until `num_requests` have finished. The
prompts are `bench serve`'s (same tags, seed and lengths) wrapped in the chat template, so a served
level and an engine level at the same size measure the same work. Latencies are read off step
timestamps: TTFT from the add to the step that produced the first token.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from bench.energy import Counter, Sampler, window_energy
from bench.progress import Progress
from bench.result import SCHEMA, level_entry, repeat_entry
from bench.serve_load import prompt_text
from bench.stats import Objective, RequestRecord, summarize
from bench.windows import steady_window, tokens_in_window
from bench.workload import LengthDist, request_shapes


@dataclass(frozen=True)
class EngineSettings:
    model: str
    batches: tuple[int, ...]
    input_len: LengthDist
    output_len: LengthDist
    num_requests: int = 64
    warmup: int = 2
    repeats: int = 1
    seed: int = 0
    dtype: str = "bfloat16"
    threads: int | None = None
    kv_cache_mb: int = 256
    objective: Objective = Objective()

    def describe(self) -> dict:
        d = asdict(self)
        d["input_len"], d["output_len"] = self.input_len.spec, self.output_len.spec
        d["mean_input_len"], d["mean_output_len"] = self.input_len.mean, self.output_len.mean
        return d


@dataclass(slots=True)
class _Live:
    record: RequestRecord
    last: float | None = None  # when its last token came


def load_llm(settings: EngineSettings) -> object:
    import torch  # here, so that importing this module (and `llmaas --help`) does not pay for torch

    from engine import LLM

    if settings.threads:
        torch.set_num_threads(settings.threads)
    return LLM(settings.model, dtype=getattr(torch, settings.dtype), max_num_seqs=max(settings.batches),
               kv_cache_bytes=settings.kv_cache_mb * 1024 * 1024)


def prompts(llm: object, settings: EngineSettings, tag: str, n: int) -> list[tuple[list[int], int]]:
    tok = llm.tokenizer
    out = []
    for i, shape in enumerate(request_shapes(n, settings.input_len, settings.output_len, settings.seed)):
        conversation = [{"role": "user", "content": prompt_text(f"{tag}-{i}", shape.input_len)}]
        out.append((tok.encode(tok.apply_chat_template(conversation), add_special_tokens=False), shape.output_len))
    return out


def closed_loop(llm: object, work: list[tuple[list[int], int]], batch: int, tag: str,
                progress: Progress | None) -> list[RequestRecord]:
    from engine import SamplingParams

    engine = llm.engine
    pending = iter(enumerate(work))
    live: dict[str, _Live] = {}
    records: list[RequestRecord] = []

    def admit() -> None:
        while len(live) < batch and (item := next(pending, None)) is not None:
            i, (ids, output_len) = item
            rid = f"{tag}-{i}"
            engine.add_request(rid, ids, SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True))
            live[rid] = _Live(RequestRecord(prompt_tokens=len(ids), start=time.perf_counter()))

    admit()
    while live:
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            item = live.get(out.request_id)
            if item is None:
                continue
            new = sum(len(d.token_ids) for d in out.deltas)
            if new:
                rec = item.record
                if item.last is None:
                    rec.ttft = now - rec.start
                else:
                    rec.itls.append(now - item.last)
                item.last = now
                rec.output_tokens += new
            if out.finished:
                item.record.e2e = now - item.record.start
                records.append(live.pop(out.request_id).record)
                if progress is not None:
                    progress.update(True)
        admit()
    return records


def run_engine(settings: EngineSettings, counters: dict[str, Counter | str], idle: dict[str, float],
               show_progress: bool = True, llm: object | None = None) -> list[dict]:
    llm = llm if llm is not None else load_llm(settings)
    levels = []
    for batch in settings.batches:
        repeats = []
        for r in range(settings.repeats):
            tag = f"batch{batch}-r{r}"
            if settings.warmup:
                closed_loop(llm, prompts(llm, settings, "warmup-" + tag, settings.warmup), batch, "w" + tag, None)
            work = prompts(llm, settings, tag, settings.num_requests)
            progress = Progress(f"batch {batch} #{r + 1}", len(work)) if show_progress else None
            cpu0, wall0 = time.process_time(), time.perf_counter()
            with Sampler(counters) as sampler:
                records = closed_loop(llm, work, batch, tag, progress)
            wall = time.perf_counter() - wall0
            if progress is not None:
                progress.close()
            start, end = steady_window(records, batch)
            tokens = tokens_in_window(records, start, end)
            energy = {dev: window_energy(c, sampler.timelines.get(dev), start, end, tokens, idle.get(dev))
                      for dev, c in counters.items()}
            summary = summarize(records, wall, settings.objective)
            repeats.append(repeat_entry(summary, records, energy, (time.process_time() - cpu0) / wall))
        levels.append(level_entry({"batch": batch}, repeats))
    return levels


def engine_document(settings: EngineSettings, levels: list[dict], provenance: dict,
                    idle: dict[str, float], counters: dict[str, Counter | str]) -> dict:
    return {
        "schema": SCHEMA, "kind": "engine", **provenance, "settings": settings.describe(), "levels": levels,
        "energy_counters": {dev: (c if isinstance(c, str) else c.name) for dev, c in counters.items()},
        "idle_power_w": idle,
        "left": ["per-request energy attribution: the engine's job (issue 7)"],
    }
