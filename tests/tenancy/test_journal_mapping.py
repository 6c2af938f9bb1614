"""The ledger journal's mapped files (growth past the first mapping, emptying, the tail cut at close)
and when its rows are committed: a batch whole; rows written on an event loop while it runs; rows
of a loop that ended before its commit."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from gateway.tenancy import Catalog, Counts, FakeClock, SqliteStore, Tenancy
from gateway.tenancy.journal import SUFFIX, Journal, frame, parse
from gateway.tenancy.store import AuditRecord
from gateway.tenancy.tiers import parse_config
from tests.tenancy.conftest import NOW, SMALL


def records(n: int, note: str = "") -> list[AuditRecord]:
    return [AuditRecord(seq=i, time=1.0, tenant="t", token_id=None, client=None, model=None, status=200,
                        reason="ok", request_id=f"{note}{i}", hash=f"h{i}") for i in range(1, n + 1)]


def test_frames_past_the_first_mapping_are_all_kept(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "j"))
    try:
        # ~4,000 frames of ~1 KB: several times the first 1 MiB mapping.
        written = records(4000, note="x" * 900)
        for r in written:
            journal.write(frame(None, r))
        assert [a.seq for _, a in journal.read()] == list(range(1, 4001))
        assert journal.read()[-1][1].request_id == "x" * 900 + "4000"
    finally:
        journal.close()


def test_an_emptied_file_replays_nothing_and_the_other_keeps_its_frames(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = Journal(str(path))
    first, second = records(2)
    try:
        journal.write(frame(None, first))
        taken = journal.switch()
        journal.write(frame(None, second))
        journal.truncate(taken)
        assert [a.seq for _, a in journal.read()] == [2]
    finally:
        journal.close()
    # Closing cuts each file to its frames: the emptied one to nothing, the other to one frame.
    assert os.path.getsize(journal.paths[0]) == 0
    assert os.path.getsize(journal.paths[1]) == len(frame(None, second))
    reopened = Journal(str(path))  # a later write goes after the frames already there
    try:
        reopened.switch()
        reopened.write(frame(None, records(3)[2]))
        assert [a.seq for _, a in reopened.read()] == [2, 3]
    finally:
        reopened.close()


def test_a_batch_of_200_rows_commits_whole_with_an_exact_chain(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    catalog = Catalog.load(clock)
    catalog.set_hosts("qwen3:8b", ["gpu-1"])
    tenancy = Tenancy(SqliteStore(tmp_path / "b.db", flush_interval_s=3600), parse_config(SMALL), catalog, clock)
    try:
        p = tenancy.local_principal()
        for i in range(200):
            a = tenancy.admit(p, "qwen3:8b", prompt_tokens=3, max_tokens=2, request_id=f"r{i}")
            tenancy.finish(a, Counts(3, 1, 2, 0)).result()
        tenancy.store.flush()
        rows = tenancy.store.usage("local", 0)
        assert [r.request_id for r in rows] == [f"r{i}" for i in range(200)]
        assert sum(r.cached_input_tokens for r in rows) == 200
        assert [r.seq for r in tenancy.store.audit_records()] == list(range(1, 201))
        assert tenancy.audit.verify() == []
    finally:
        tenancy.close()


def open_tenancy(db: Path, interval_s: float) -> Tenancy:
    clock = FakeClock(NOW)
    catalog = Catalog.load(clock)
    catalog.set_hosts("qwen3:8b", ["gpu-1"])
    return Tenancy(SqliteStore(db, flush_interval_s=interval_s), parse_config(SMALL), catalog, clock)


def finish_one(tenancy: Tenancy, request_id: str) -> None:
    a = tenancy.admit(tenancy.local_principal(), "qwen3:8b", prompt_tokens=3, max_tokens=2, request_id=request_id)
    tenancy.finish(a, Counts(3, 0, 2, 0)).result()


def journaled(db: Path) -> list[str]:
    """Request ids of the entries still in the journal files (not committed yet)."""
    return [a.request_id for n in (0, 1) for _, a in parse(Path(f"{db}{SUFFIX}-{n}").read_bytes())]


def wait_until_empty(db: Path, timeout_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while journaled(db) and time.monotonic() < deadline:
        time.sleep(0.01)
    return journaled(db)


def test_rows_written_on_an_event_loop_are_committed_while_it_runs(tmp_path: Path) -> None:
    db = tmp_path / "loop.db"
    tenancy = open_tenancy(db, 0.02)

    async def serve() -> list[str]:
        for i in range(3):
            finish_one(tenancy, f"r{i}")
        assert journaled(db) == ["r0", "r1", "r2"]  # durable, not committed yet
        await asyncio.sleep(0.2)  # the loop runs: its commit comes
        return journaled(db)

    try:
        assert asyncio.run(serve()) == []
        assert [r.request_id for r in tenancy.store.usage(None, 0)] == ["r0", "r1", "r2"]
    finally:
        tenancy.close()


def test_rows_of_a_loop_that_ended_before_its_commit_are_committed_by_the_next_write(tmp_path: Path) -> None:
    db = tmp_path / "ended.db"
    tenancy = open_tenancy(db, 0.02)

    async def burst() -> None:
        for i in range(3):
            finish_one(tenancy, f"r{i}")  # the loop ends at once: its commit never runs

    try:
        asyncio.run(burst())
        finish_one(tenancy, "after")  # outside any loop: the writer thread commits all four
        assert wait_until_empty(db) == []
        assert [r.request_id for r in tenancy.store.usage(None, 0)] == ["r0", "r1", "r2", "after"]
    finally:
        tenancy.close()
