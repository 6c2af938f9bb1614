"""bench/ledger_floor: its C loop writes the rows it claims to time, into the store's schema."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from bench import ledger_floor


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    try:
        return ledger_floor.compile_floor(tmp_path_factory.mktemp("floor"))
    except subprocess.CalledProcessError:
        pytest.skip("SQLite's headers (libsqlite3-dev) are missing")


@pytest.mark.parametrize(("mode", "dropped", "audit_rows"), [
    ("both", (), 1_000), ("both", ledger_floor.SECONDARY_INDEXES, 1_000), ("usage", ledger_floor.SECONDARY_INDEXES, 0)])
def test_each_shape_commits_its_rows(binary: Path, tmp_path: Path, mode: str, dropped: tuple[str, ...],
                                     audit_rows: int) -> None:
    path = tmp_path / "ledger.db"
    cpu_us, wall_us = ledger_floor.run_shape(binary, path, mode, dropped, 1_000, 300)
    assert cpu_us > 0 and wall_us > 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT request_id) FROM usage").fetchone() == (1_000, 1_000)
        assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == audit_rows
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert indexes.isdisjoint(dropped)
        assert dropped or {"usage_tenant_time", "audit_tenant_time", "audit_time"} <= indexes
