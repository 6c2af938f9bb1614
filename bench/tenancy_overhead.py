"""Micro-benchmark of the tenancy stages' per-request path: authenticate + admit + finish.

Measures, in one process and one run:
- `caller`: what the request path itself spends (the three calls; the ledger and audit write is
  queued, not waited on), per request, as a distribution over batches;
- `baseline`: the same loop with the stages off (an empty call), to subtract the loop's own cost;
- `end to end`: wall and CPU time for N requests including the writer thread's batched commits
  (synchronous=NORMAL unless LLMAAS_DB_SYNC says otherwise), i.e. the whole CPU cost the stages
  put on the machine, per request;
- `durable latency`: the time from `finish` until its row is durable, when waited on one by one:
  with the ledger journal (a file store) that is the copy into the journal, done before `finish`
  returns, so ~0; without one (":memory:", or another process owns the journal) the SQLite commit;
- `pipeline`: the gateway's real request path (`Proxy.handle`, in process, in front of the instant
  backend of bench/instant_backend.py on loopback), with the tenancy stage on and off, in
  interleaved rounds of the same run, at each --concurrency (1: sequential, each request pays its
  own durable commit; more: commits are shared by a batch); the difference is what the stage adds
  per request, the durable commit included, as wall time and as CPU time of the whole process.

    .venv/bin/python -m bench.tenancy_overhead [--requests 20000] [--pipeline 2000] [--rounds 5] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from gateway.tenancy import Catalog, Counts, SystemClock, Tenancy
from gateway.tenancy.open_store import open_store
from gateway.tenancy.tiers import parse_config

TIERS = {"tiers": {"bench": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12,
                             "concurrent_requests": 10**6, "max_tokens_per_request": 10**6,
                             "monthly_budget_eur": 10.0**12}}}
BATCH = 500


def build(db: str | Path) -> tuple[Tenancy, str]:
    clock = SystemClock()
    catalog = Catalog.load(clock)
    tenancy = Tenancy(open_store(db, cli=False), parse_config(TIERS), catalog, clock)
    secret, _ = tenancy.tokens.create("bench", "bench", ["smollm2*", "qwen3:*", "m"])
    return tenancy, f"Bearer {secret}"


def one(tenancy: Tenancy, header: str, i: int) -> object:
    rid = f"r{i}"
    p = tenancy.authenticate(header, request_id=rid, client="127.0.0.1")
    a = tenancy.admit(p, "smollm2:135m", prompt_tokens=120, max_tokens=64, request_id=rid, client="127.0.0.1")
    a.headers()
    return tenancy.finish(a, Counts(120, 32, 64, 0), 200)


def per_request_us(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    for start in range(0, n, BATCH):
        t0 = time.perf_counter()
        for i in range(start, start + BATCH):
            fn(i)
        samples.append((time.perf_counter() - t0) / BATCH * 1e6)
    return samples


Rounds = tuple[list[float], list[float], list[float], list[float]]


async def pipeline(tenancy: Tenancy, header: str, requests: int, rounds: int, concurrency: int = 1) -> Rounds:
    """Per-request wall and CPU time (us) of Proxy.handle with the tenancy stage off and on, per
    round: (wall off, wall on, cpu off, cpu on). CPU is the whole process's (all threads), so the
    writer thread's commits count; on a shared machine it is steadier than wall time."""
    import socket

    from bench.instant_backend import serve as serve_backend
    from gateway.fleet.config import GatewayConfig, ModelEntry, SecuritySection, TenancySection
    from gateway.gateway_server import Gateway
    from gateway.http import Request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = asyncio.create_task(serve_backend(port))
    await asyncio.sleep(0.2)
    models = [ModelEntry(name="m", hosts=[f"http://127.0.0.1:{port}"])]
    # Prompt security off in both arms: this measures the tenancy stage alone.
    off = Gateway(GatewayConfig(models=models, tenancy=TenancySection(enabled=False),
                                security=SecuritySection(enabled=False)))
    on = Gateway(GatewayConfig(models=models, security=SecuritySection(enabled=False)), tenancy=tenancy)
    body = b'{"model":"m","messages":[{"role":"user","content":"Say ok."}],"max_tokens":1}'

    async def run(gateway: Gateway, n: int) -> tuple[float, float]:
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                request = Request(method="POST", path="/v1/chat/completions", query_string="",
                                  headers={"authorization": header, "content-type": "application/json"},
                                  body=body, client=("127.0.0.1", 1))
                response = await gateway.proxy.handle(request)
                if response.status != 200:  # type: ignore[union-attr]
                    raise RuntimeError(f"status {response.status}: {response.body[:200]!r}")  # type: ignore[union-attr]

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        tenancy.store.flush()  # the writer's work for these requests belongs to this round
        return (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6

    try:
        for g in (off, on):
            await g.start()
            await run(g, 200)  # warm-up: pooled connections, caches
        wall_off, wall_on, cpu_off, cpu_on = [], [], [], []
        for _ in range(rounds):
            for arm, wall, cpu in ((off, wall_off, cpu_off), (on, wall_on, cpu_on)):
                w, c = await run(arm, requests)
                wall.append(w)
                cpu.append(c)
    finally:
        await off.stop()
        await on.fleet.stop()  # not on.stop(): that would close the tenancy, which main() owns
        backend.cancel()
    return wall_off, wall_on, cpu_off, cpu_on


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--db", help="store: an SQLite file or a postgresql:// URL (default: a temporary file)")
    parser.add_argument("--pipeline", type=int, default=2000, help="requests per round through the gateway path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16],
                        help="requests in flight in the pipeline rounds (each value is one run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tenancy, header = build(args.db or str(Path(tmp) / "bench.db"))
        try:
            for i in range(2000):  # warm-up: caches, the limiter state, the writer thread
                one(tenancy, header, -i - 1)
            tenancy.store.flush()

            baseline = per_request_us(lambda i: None, args.requests)
            c0 = time.thread_time()
            caller = per_request_us(lambda i: one(tenancy, header, i), args.requests)
            caller_cpu = (time.thread_time() - c0) / args.requests * 1e6  # this thread only
            tenancy.store.flush()

            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(args.requests):
                one(tenancy, header, args.requests + i)
            tenancy.store.flush()
            end_to_end = (time.perf_counter() - t0) / args.requests * 1e6
            # CPU time of every thread of this process: what the stages cost the machine, and
            # less sensitive than wall time to other work on a shared box.
            cpu = (time.process_time() - c0) / args.requests * 1e6

            durable = []
            for i in range(200):
                future = one(tenancy, header, 3 * args.requests + i)
                t0 = time.perf_counter()
                future.result()  # type: ignore[attr-defined]
                durable.append((time.perf_counter() - t0) * 1e3)
            runs = {c: asyncio.run(pipeline(tenancy, header, args.pipeline, args.rounds, c)) for c in args.concurrency}
        finally:
            tenancy.close()
    base = statistics.median(baseline)
    print(f"requests per measurement: {args.requests} (batches of {BATCH})")
    print(f"baseline loop           : median {base:.2f} us/request")
    print(f"caller path (stages on) : median {statistics.median(caller):.1f} us/request, "
          f"min {min(caller):.1f}, max {max(caller):.1f}; minus baseline {statistics.median(caller) - base:.1f} us; "
          f"{caller_cpu:.1f} us/request CPU of the calling thread")
    print(f"end to end with commits : {end_to_end:.1f} us/request wall, {cpu:.1f} us/request CPU "
          "(all threads: includes the writer's batched commits)")
    print(f"durable latency (1 by 1): median {statistics.median(durable):.2f} ms, "
          f"p90 {sorted(durable)[int(0.9 * len(durable))]:.2f} ms")
    for c, (wall_off, wall_on, cpu_off, cpu_on) in runs.items():
        for what, off, on in (("wall", wall_off, wall_on), ("CPU", cpu_off, cpu_on)):
            diffs = [b - a for a, b in zip(off, on)]
            print(f"pipeline x{c:<3} {what:4} off/on: {' '.join(f'{t:.0f}' for t in off)} / "
                  f"{' '.join(f'{t:.0f}' for t in on)} us/request per round; added: median {statistics.median(diffs):.1f} us")

if __name__ == "__main__":
    main()
