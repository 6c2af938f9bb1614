"""SQLite's floor for the native lane's ledger: what one usage row and one audit record a request cost
SQLite alone on this machine, in the store's schema, against the tenant stages' whole cost on the lane.

The lane's ledger thread (csrc/gateway/lane_ledger.cpp) commits, each tick, one usage row and one
chained audit record for every request the lane served. bench/ledger_floor.c runs its statements in a
C loop (prepared once, one transaction a batch, no hashing, no journal, no interpreter) on a file the
store's migrations made, in three shapes of the schema:
- as shipped (the usage (tenant, time) index, the audit (tenant, time) and (time) indexes);
- with no secondary index at all (what the rows alone cost);
- the usage row alone, no index (one row a request, the least any per-request ledger stores).

CPU microseconds per request, the median of --rounds runs. Needs a C compiler and SQLite's headers
(libsqlite3-dev), as the native lane's ledger does.

    .venv/bin/python -m bench.ledger_floor [--requests 200000] [--batch 2500] [--rounds 3]

--batch: requests a transaction; the lane commits every 50 ms, 2,500 requests at 50,000 a second.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
from pathlib import Path

from gateway.tenancy.migrations import migrate

SOURCE = Path(__file__).with_suffix(".c")
SECONDARY_INDEXES = ("usage_tenant_time", "audit_tenant_time", "audit_time", "audit_prompt_time")
SHAPES = (("schema as shipped", "both", ()),
          ("no secondary index", "both", SECONDARY_INDEXES),
          ("usage row alone, no index", "usage", SECONDARY_INDEXES))


def compile_floor(folder: Path) -> Path:
    binary = folder / "ledger_floor"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("no C compiler (cc or gcc) to build bench/ledger_floor.c")
    subprocess.run([compiler, "-O2", str(SOURCE), "-o", str(binary), "-lsqlite3"], check=True)
    return binary


def fresh_database(path: Path, dropped: tuple[str, ...]) -> None:
    """A store's file as its migrations make it (WAL), less the `dropped` indexes."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    migrate(conn)
    for index in dropped:
        conn.execute(f"DROP INDEX {index}")
    conn.commit()
    conn.close()


def run_shape(binary: Path, path: Path, mode: str, dropped: tuple[str, ...], requests: int,
              batch: int) -> tuple[float, float]:
    """(CPU us, wall us) per request."""
    fresh_database(path, dropped)
    out = subprocess.run([str(binary), str(path), mode, str(requests), str(batch)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]) / requests * 1e6, float(out[1]) / requests * 1e6


def measure(requests: int, batch: int, rounds: int) -> list[tuple[str, float, float]]:
    """(shape, median CPU us, median wall us) per request, shapes interleaved round by round."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        binary = compile_floor(folder)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in SHAPES}
        for _ in range(rounds):
            for name, mode, dropped in SHAPES:
                samples[name].append(run_shape(binary, folder / "ledger.db", mode, dropped, requests, batch))
    return [(name, statistics.median(c for c, _ in s), statistics.median(w for _, w in s))
            for name, s in samples.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2_500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"SQLite {sqlite3.sqlite_version}; {args.requests} requests, {args.batch} a transaction, "
          f"median of {args.rounds} rounds")
    print("| ledger rows a request | CPU us per request | wall us per request |\n|---|---|---|")
    for name, cpu_us, wall_us in measure(args.requests, args.batch, args.rounds):
        print(f"| {name} | {cpu_us:.2f} | {wall_us:.2f} |")


if __name__ == "__main__":
    main()
