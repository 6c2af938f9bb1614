"""The tests' throwaway PostgreSQL server (pg_server.py): one left running by a killed test run is
stopped and deleted by the next run's, a live run's is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.tenancy.pg_server import PgServer, _alive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ABANDON = ("import os; from tests.tenancy.pg_server import PgServer, bin_dir; "
            "print(PgServer(bin_dir()).root, flush=True); os._exit(0)")


def test_a_server_left_by_a_killed_run_is_stopped_by_the_next(postgres: PgServer) -> None:
    root = subprocess.run([sys.executable, "-c", _ABANDON], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()
    with open(os.path.join(root, "data", "postmaster.pid")) as f:
        postmaster = int(f.readline())
    assert _alive(postmaster)
    postgres.stop_abandoned()
    assert not os.path.exists(root) and not _alive(postmaster)
    assert os.path.isdir(postgres.root)  # this run's own server runs on
