"""`llmaas bench serve | engine | compare`: the benchmark suite (bench/)."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_MODEL = "smollm2:135m"


def add_bench_parsers(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks: serving load, offline engine, comparisons")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")

    serve = sub.add_parser("serve", help="streaming load against an OpenAI-compatible server")
    serve.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    serve.add_argument("--model", required=True)
    serve.add_argument("--api-key", default=None, help="sent as a bearer token")
    load = serve.add_mutually_exclusive_group()
    load.add_argument("--concurrency", default=None, help="comma-separated fixed concurrencies (default 1,8,32)")
    load.add_argument("--rate", default=None, help="comma-separated Poisson arrival rates, requests/s")
    serve.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    _add_workload(serve)
    serve.set_defaults(run=run_serve)

    engine = sub.add_parser("engine", help="offline engine throughput (no HTTP) on the same workloads")
    engine.add_argument("--model", default=DEFAULT_MODEL)
    engine.add_argument("--batch-sizes", default="1,8,32", help="comma-separated: requests kept in the engine")
    engine.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    engine.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    engine.add_argument("--kv-cache-mb", type=int, default=256)
    _add_workload(engine)
    engine.set_defaults(run=run_engine)

    cmp = sub.add_parser("compare", help="ratios and verdicts between result files (the first is the baseline)")
    cmp.add_argument("results", nargs="+", type=Path, help="result.json files or run folders")
    cmp.add_argument("--metrics", default=None, help="comma-separated metric names (default: the main ones)")
    cmp.add_argument("--min-noise", type=float, default=0.05,
                     help="smallest relative change that is not noise, when the runs' spread is smaller")
    cmp.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    cmp.set_defaults(run=run_compare)


def _add_workload(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-len", default="64", help="prompt tokens: N, uniform:LO-HI, chat or mix:FILE")
    p.add_argument("--output-len", default="128", help="output tokens: N, uniform:LO-HI, chat or mix:FILE")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--num-requests", type=int, default=None, help="measured requests per level (default 64)")
    if p.prog.endswith("serve"):
        size.add_argument("--duration", type=float, default=None, help="seconds of sending per level")
    p.add_argument("--warmup", type=int, default=2, help="uncounted requests before each level")
    p.add_argument("--repeats", type=int, default=1, help="runs of each level, for medians and spread")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slo-ttft-ms", type=float, default=None, help="goodput objective: time to first token")
    p.add_argument("--slo-tpot-ms", type=float, default=None, help="goodput objective: time per output token")
    p.add_argument("--slo-e2e-ms", type=float, default=None, help="goodput objective: end-to-end latency")
    p.add_argument("--out", type=Path, default=None, help="folder for result.json, summary.md and plots")
    p.add_argument("--idle-seconds", type=float, default=2.0, help="idle power measured before the run")
    p.add_argument("--powercap", type=Path, default=Path("/sys/class/powercap"), help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")




def _common(args: argparse.Namespace) -> tuple[object, object, object]:
    from bench.stats import Objective
    from bench.workload import parse_length

    def ms(v: float | None) -> float | None:
        return None if v is None else v / 1e3

    objective = Objective(ttft=ms(args.slo_ttft_ms), tpot=ms(args.slo_tpot_ms), e2e=ms(args.slo_e2e_ms))
    return parse_length(args.input_len, "input"), parse_length(args.output_len, "output"), objective


def _levels(text: str, cast: type) -> tuple:
    values = tuple(cast(v) for v in text.split(",") if v.strip())
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"levels must be positive numbers: {text!r}")
    return values


def _finish(doc: dict, out: Path | None, kind: str, progress: bool) -> int:
    from bench.report import markdown, write_outputs

    out = out or Path("bench-results") / f"{kind}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    files = write_outputs(doc, out)
    print(markdown(doc))
    print("wrote " + ", ".join(str(f) for f in files), file=sys.stderr if progress else sys.stdout)
    errors = sum(sum(r["summary"]["errors"].values()) for level in doc["levels"] for r in level["repeats"])
    return 0 if errors == 0 else 1


def _energy(args: argparse.Namespace) -> tuple[dict, dict]:
    from bench.energy import idle_power, open_counters

    counters = open_counters(args.powercap)
    return counters, idle_power(counters, args.idle_seconds)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from bench.machine import provenance
    from bench.serve_suite import ServeSettings, run_serve as run, serve_document

    try:
        input_len, output_len, objective = _common(args)
        if args.rate:
            loads = tuple({"rate": r} for r in _levels(args.rate, float))
        else:
            loads = tuple({"concurrency": c} for c in _levels(args.concurrency or "1,8,32", int))
        settings = ServeSettings(args.base_url, args.model, loads, input_len, output_len,
                                 None if args.duration else (args.num_requests or 64), args.duration,
                                 args.warmup, args.repeats, args.seed, args.timeout, objective, args.api_key)
        if (settings.num_requests or 1) < 1 or settings.repeats < 1 or (args.duration is not None and args.duration <= 0):
            raise ValueError("--num-requests, --repeats and --duration must be positive")
    except (ValueError, OSError) as exc:
        print(f"llmaas bench: error: {exc}", file=sys.stderr)
        return 2
    counters, idle = _energy(args)
    prov = provenance()
    levels = asyncio.run(run(settings, counters, idle, show_progress=not args.no_progress))
    return _finish(serve_document(settings, levels, prov, idle, counters), args.out, "serve", not args.no_progress)


def run_engine(args: argparse.Namespace) -> int:
    from bench.engine_suite import EngineSettings, engine_document, run_engine as run
    from bench.machine import provenance

    try:
        input_len, output_len, objective = _common(args)
        settings = EngineSettings(args.model, _levels(args.batch_sizes, int), input_len, output_len,
                                  args.num_requests or 64, args.warmup, args.repeats, args.seed, args.dtype,
                                  args.threads, args.kv_cache_mb, objective)
        if settings.num_requests < 1 or settings.repeats < 1:
            raise ValueError("--num-requests and --repeats must be positive")
    except (ValueError, OSError) as exc:
        print(f"llmaas bench: error: {exc}", file=sys.stderr)
        return 2
    counters, idle = _energy(args)
    prov = provenance()
    levels = run(settings, counters, idle, show_progress=not args.no_progress)
    return _finish(engine_document(settings, levels, prov, idle, counters), args.out, "engine", not args.no_progress)


def run_compare(args: argparse.Namespace) -> int:
    from bench.compare import DEFAULT_METRICS, compare, load_docs

    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else DEFAULT_METRICS
    try:
        text = compare(load_docs(args.results), metrics, args.min_noise)
    except (ValueError, OSError, KeyError) as exc:
        print(f"llmaas bench: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0
