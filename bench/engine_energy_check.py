"""Per-request energy on a real device: which meter the engine finds, what one reading costs, how
often the counter moves, and a batch of requests whose usage energies must sum to the engine's
metered total; plus the step loop's time with the meter against without it (the metering overhead).

    python -m bench.engine_energy_check --device cuda --out DIR     # a GPU host, about a minute
    python -m bench.engine_energy_check --device cpu --requests 4 --tokens 8   # smoke test

The model is SmolLM2-135M's shape with random weights made on the device (load_format="dummy"),
so nothing is downloaded; energy does not depend on the weights' values.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench import gpu_models as gm
from engine.config import EngineConfig
from engine.energy import EnergyMeter, EnergySource, unmetered
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


def read_cost_us(meter: EnergyMeter, reads: int = 2000) -> float:
    t0 = time.perf_counter()
    for _ in range(reads):
        meter.read_joules()
    return (time.perf_counter() - t0) / reads * 1e6


def update_interval_ms(meter: EnergyMeter, seconds: float = 1.0) -> float | None:
    """The median time between changes of the counter, polled for `seconds`."""
    changes: list[float] = []
    last = meter.read_joules()
    t_end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < t_end:
        value = meter.read_joules()
        if value != last:
            changes.append(now)
            last = value
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    return statistics.median(gaps) * 1e3 if gaps else None


def run_batch(engine: LLMEngine, requests: int, prompt_len: int, tokens: int, tag: str) -> tuple[float, list[float]]:
    """Wall seconds to serve the batch, and each request's usage energy (empty when unmetered)."""
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    for i in range(requests):
        engine.add_request(f"{tag}-{i}", [(i * 7 + j) % (vocab - 3) + 3 for j in range(prompt_len)], params)
    energies: list[float] = []
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished and out.usage is not None and out.usage.energy_joules is not None:
                energies.append(out.usage.energy_joules)
    return time.perf_counter() - t0, energies


def build(folder: Path, device: str, energy: EnergySource | None) -> LLMEngine:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    config = EngineConfig(device=device, dtype=dtype, load_format="dummy", kv_cache_bytes=1 << 30,
                          max_num_seqs=256, max_num_batched_tokens=4096)
    return LLMEngine(str(folder), config, energy=energy)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="metered and unmetered runs, interleaved")
    p.add_argument("--out", type=Path, help="folder for energy_check.json")
    args = p.parse_args()
    report: dict = {"device": args.device, "requests": args.requests, "prompt_len": args.prompt_len,
                    "tokens": args.tokens}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        shape = {**gm.SMOLLM2_135M, "vocab_size": 1000} if args.device == "cpu" else gm.SMOLLM2_135M
        folder = gm.save_config_folder(shape, gm.build_tokenizer(), Path(tmp) / "model")
        metered = build(folder, args.device, None)  # the device's own meter, as `llmaas engine` finds it
        source = metered.energy_source
        report["meter"] = {"kind": source.kind, "detail": source.detail}
        print(f"meter: {source.kind}: {source.detail}", flush=True)
        if source.meter is not None:
            report["meter"]["read_cost_us"] = read_cost_us(source.meter)
            report["meter"]["update_interval_ms"] = update_interval_ms(source.meter)
        plain = build(folder, args.device, unmetered("switched off for the comparison"))
        run_batch(metered, 4, 16, 4, "warm-m")  # graphs, kernels and allocator warm on both
        run_batch(plain, 4, 16, 4, "warm-p")
        walls: dict[str, list[float]] = {"metered": [], "unmetered": []}
        before = metered.stats.energy_joules
        energies: list[float] = []
        for r in range(args.rounds):
            wall, got = run_batch(metered, args.requests, args.prompt_len, args.tokens, f"m{r}")
            walls["metered"].append(wall)
            energies.extend(got)
            walls["unmetered"].append(run_batch(plain, args.requests, args.prompt_len, args.tokens, f"p{r}")[0])
        report["wall_s"] = walls
        report["metered_over_unmetered"] = statistics.median(walls["metered"]) / statistics.median(walls["unmetered"])
        if source.meter is not None and before is not None and metered.stats.energy_joules is not None:
            total = metered.stats.energy_joules - before
            tokens = args.rounds * args.requests * (args.prompt_len + args.tokens)
            report["energy"] = {"engine_total_j": total, "sum_of_requests_j": sum(energies),
                                "requests": len(energies), "per_request_j": statistics.median(energies),
                                "min_request_j": min(energies), "max_request_j": max(energies),
                                "j_per_token_all": total / tokens,
                                "kwh_per_mtok_output": total / 3.6e6 / (args.rounds * args.requests * args.tokens / 1e6)}
    print(json.dumps(report, indent=2), flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "energy_check.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
