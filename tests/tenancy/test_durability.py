"""A process killed with SIGKILL while writing loses no usage row whose write it had seen commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.tenancy import Catalog, FakeClock, Tenancy
from gateway.tenancy.tiers import parse_config
from tests.tenancy.conftest import SMALL, open_at

WRITER = textwrap.dedent("""
    import sys, threading
    from gateway.tenancy import Catalog, Counts, FakeClock, Tenancy
    from gateway.tenancy.tiers import parse_config
    from tests.tenancy.conftest import SMALL, open_at

    clock = FakeClock(1768435200.0)
    catalog = Catalog.load(clock)
    catalog.set_hosts("qwen3:8b", ["gpu-1"])
    tenancy = Tenancy(open_at(sys.argv[1]), parse_config(SMALL), catalog, clock)
    secret, _ = tenancy.tokens.create("acme", "big")
    out = threading.Lock()

    def worker(w):
        for i in range(10**9):
            rid = f"w{w}-{i}"
            p = tenancy.authenticate("Bearer " + secret, request_id=rid)
            a = tenancy.admit(p, "qwen3:8b", prompt_tokens=7, max_tokens=5, request_id=rid)
            tenancy.finish(a, Counts(7, 0, 5, 0)).result()  # committed: now we may say so
            with out:
                sys.stdout.write(rid + "\\n")
                sys.stdout.flush()

    for w in range(4):
        threading.Thread(target=worker, args=(w,), daemon=True).start()
    threading.Event().wait()
""")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_under_load_loses_no_committed_row(tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    # PostgreSQL's: a gateway killed with its writer's batch in flight, never flushed.
    db = request.getfixturevalue("pg_url") if kind == "postgres" else str(tmp_path / "kill.db")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, db], stdout=subprocess.PIPE, env=env, text=True)
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        while len(acked) < 300:
            line = proc.stdout.readline()
            assert line, "the writer died before it was killed"
            acked.append(line.strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    clock = FakeClock(1768435200.0)
    tenancy = Tenancy(open_at(db), parse_config(SMALL), Catalog.load(clock), clock)
    try:
        stored = {r.request_id for r in tenancy.store.usage("acme", 0)}
        assert set(acked) <= stored
        assert tenancy.audit.verify() == []  # each batch committed whole: the chain has no hole
        audited = {r.request_id for r in tenancy.store.audit_records()}
        assert stored == audited  # a usage row and its audit record are one transaction
    finally:
        tenancy.close()
