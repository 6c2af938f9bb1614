"""The ledger journal: rows answered once copied into the journal's mapped file survive a kill -9 before any commit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.tenancy import Catalog, Counts, FakeClock, SqliteStore, Tenancy
from gateway.tenancy.journal import SUFFIX, Journal, frame, parse
from gateway.tenancy.store import AuditRecord
from gateway.tenancy.tiers import parse_config
from tests.tenancy.conftest import SMALL

# Commits never come (an hour's flush interval): every row is only in the journal when it dies.
KILLED = textwrap.dedent("""
    import os, signal, sys
    from gateway.tenancy import Catalog, Counts, FakeClock, SqliteStore, Tenancy
    from gateway.tenancy.tiers import parse_config
    from tests.tenancy.conftest import SMALL

    clock = FakeClock(1768435200.0)
    catalog = Catalog.load(clock)
    catalog.set_hosts("qwen3:8b", ["gpu-1"])
    tenancy = Tenancy(SqliteStore(sys.argv[1], flush_interval_s=3600), parse_config(SMALL), catalog, clock)
    secret, _ = tenancy.tokens.create("acme", "big")
    for i in range(int(sys.argv[2])):
        p = tenancy.authenticate("Bearer " + secret, request_id=f"r{i}")
        a = tenancy.admit(p, "qwen3:8b", prompt_tokens=7, max_tokens=5, request_id=f"r{i}")
        tenancy.finish(a, Counts(7, 0, 5, 0)).result()
    os.kill(os.getpid(), signal.SIGKILL)
""")


def journal_size(db: Path) -> int:
    return sum(os.path.getsize(f"{db}{SUFFIX}-{n}") for n in (0, 1))


def open_tenancy(db: Path) -> Tenancy:
    clock = FakeClock(1768435200.0)
    catalog = Catalog.load(clock)
    catalog.set_hosts("qwen3:8b", ["gpu-1"])
    return Tenancy(SqliteStore(db), parse_config(SMALL), catalog, clock)


def kill_after(db: Path, n: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-c", KILLED, str(db), str(n)], env=env, timeout=60)
    assert proc.returncode == -9


def test_rows_only_in_the_journal_are_replayed_with_an_exact_chain(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    kill_after(db, 20)
    assert journal_size(db) > 0  # nothing was committed: all of it is in the journal
    tenancy = open_tenancy(db)
    try:
        assert [r.request_id for r in tenancy.store.usage("acme", 0)] == [f"r{i}" for i in range(20)]
        assert [r.seq for r in tenancy.store.audit_records()] == list(range(1, 21))
        assert tenancy.audit.verify() == []
        # The killed process's chain, whole: its 20 records and their head.
        assert [seq for c, (seq, _) in tenancy.store.audit_heads().items() if c != tenancy.audit.chain] == [20]
        assert journal_size(db) == 0  # truncated once replayed
        # This process's own chain starts beside it.
        p = tenancy.local_principal()
        a = tenancy.admit(p, "qwen3:8b", prompt_tokens=1, max_tokens=1, request_id="after")
        tenancy.finish(a, Counts(1, 0, 1, 0)).result()
    finally:
        tenancy.close()
    kill_after(db, 5)  # a second crash, on top of committed rows
    tenancy = open_tenancy(db)
    try:
        assert len(tenancy.store.usage("acme", 0)) == 25
        assert tenancy.audit.verify() == []
    finally:
        tenancy.close()


def test_entries_already_committed_are_not_inserted_twice(tmp_path: Path) -> None:
    db = tmp_path / "twice.db"
    tenancy = open_tenancy(db)
    p = tenancy.local_principal()
    a = tenancy.admit(p, "qwen3:8b", prompt_tokens=1, max_tokens=1, request_id="x")
    tenancy.finish(a, Counts(1, 0, 1, 0)).result()
    tenancy.store.flush()
    record = list(tenancy.store.audit_records())[-1]
    usage = tenancy.store.usage(None, 0)[-1]
    tenancy.close()
    # As if killed between the commit and the truncation.
    with open(f"{db}{SUFFIX}-1", "ab") as f:
        f.write(frame(usage, record))
    tenancy = open_tenancy(db)
    try:
        assert [r.request_id for r in tenancy.store.usage(None, 0)] == ["x"]
        assert tenancy.audit.verify() == []
    finally:
        tenancy.close()


def test_a_torn_or_corrupt_tail_ends_the_replay() -> None:
    records = [AuditRecord(seq=i, time=1.0, tenant="t", token_id=None, client=None, model=None, status=200,
                           reason="ok", hash=f"h{i}") for i in (1, 2)]
    good = frame(None, records[0]) + frame(None, records[1])
    assert [a.seq for _, a in parse(good)] == [1, 2]
    assert [a.seq for _, a in parse(good[:-3])] == [1]  # torn
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    assert [a.seq for _, a in parse(bytes(flipped))] == [1]  # checksum


def test_a_second_process_on_the_database_writes_directly(tmp_path: Path) -> None:
    db = tmp_path / "two.db"
    gateway = open_tenancy(db)
    cli = open_tenancy(db)  # the journal is the gateway's: the CLI neither replays it nor writes to it
    try:
        assert gateway.store.writer.journal is not None and cli.store.writer.journal is None
        p = cli.local_principal()
        a = cli.admit(p, "qwen3:8b", prompt_tokens=1, max_tokens=1, request_id="cli")
        cli.finish(a, Counts(1, 0, 1, 0)).result()  # committed at once
        assert [r.request_id for r in gateway.store.usage(None, 0)] == ["cli"]
    finally:
        cli.close()
        gateway.close()



def test_a_committed_batch_is_truncated_while_writes_go_on(tmp_path: Path) -> None:
    """Under constant load the journal is never empty: the writer takes a batch, later writes go to
    the other file, and the batch's file is truncated once committed."""
    records = [AuditRecord(seq=i, time=1.0, tenant="t", token_id=None, client=None, model=None, status=200,
                           reason="ok", hash=f"h{i}") for i in (1, 2, 3)]
    journal = Journal(str(tmp_path / "j"))
    try:
        journal.write(frame(None, records[0]))
        taken = journal.switch()  # the writer takes seq 1
        journal.write(frame(None, records[1]))  # written while seq 1 commits
        journal.truncate(taken)  # seq 1 committed
        journal.write(frame(None, records[2]))
        assert [a.seq for _, a in journal.read()] == [2, 3]
        taken = journal.switch()
        journal.truncate(taken)
        assert journal.read() == []
    finally:
        journal.close()


def test_a_gateway_waits_out_a_cli_command_that_holds_the_journal(tmp_path: Path) -> None:
    # A CLI command holds the journal for the moments it runs: a gateway starting then would get no
    # journal (and no native lane) for its whole life, had it not waited.
    import threading

    db = str(tmp_path / "t.db")
    SqliteStore(db).close()
    held = Journal(db + SUFFIX)
    cli = SqliteStore(db)  # the CLI's way: no wait
    assert not cli.journaled
    cli.close()
    threading.Timer(0.3, held.close).start()
    store = SqliteStore(db, journal_wait_s=2.0)
    assert store.journaled
    store.close()


def test_a_cli_command_lets_the_journal_go_after_its_replay(tmp_path: Path) -> None:
    # A long command (an audit export of a large database) held the journal for all its run: a
    # gateway starting meanwhile ran without it, and without its native lane, for its whole life.
    from gateway.tenancy import SystemClock
    from gateway.tenancy.audit import AuditTrail

    db = str(tmp_path / "t.db")
    cli = SqliteStore(db, hold_journal=False)  # the CLI's way (replays happen at open, then it lets go)
    try:
        assert not cli.journaled
        gateway = SqliteStore(db)  # no wait needed
        try:
            assert gateway.journaled
            AuditTrail(cli, SystemClock()).append(status=200, reason="token_created", tenant="acme").result()
            cli.flush()
            assert [r.reason for r in gateway.audit_records()] == ["token_created"]
        finally:
            gateway.close()
    finally:
        cli.close()


def test_a_store_under_full_sync_replays_both_journals_and_lets_them_go(tmp_path: Path) -> None:
    # A gateway killed under NORMAL, restarted under LLMAAS_DB_SYNC=FULL: its rows were left in the
    # ledger journal and the native lane's, and nobody recorded them until a later NORMAL open.
    import struct
    import zlib

    import msgspec

    from gateway.tenancy import lane_ledger

    db = tmp_path / "full.db"
    kill_after(db, 3)
    lane_row = lane_ledger.LaneEntry(request_id="lane-1", time=1768435300.0, tenant="acme", token_id="t1",
                                     model="qwen3:8b", input_tokens=4, cached_input_tokens=0, output_tokens=2,
                                     reasoning_tokens=0, cost_eur=0.0, status=200, latency_ms=1.5,
                                     client="127.0.0.1", reason="ok")
    payload = msgspec.msgpack.encode(lane_row)
    with open(f"{db}{lane_ledger.SUFFIX}-0", "wb") as f:
        f.write(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
    store = SqliteStore(db, synchronous="FULL")
    try:
        assert sorted(r.request_id for r in store.usage("acme", 0)) == ["lane-1", "r0", "r1", "r2"]
        assert journal_size(db) == 0
        assert os.path.getsize(f"{db}{lane_ledger.SUFFIX}-0") == 0
        assert not store.journaled  # each batch commits with its fsync: no row waits in a journal
        gateway = SqliteStore(db, journal_wait_s=0.0)  # so a NORMAL gateway beside it gets the journal
        try:
            assert gateway.journaled
        finally:
            gateway.close()
    finally:
        store.close()
