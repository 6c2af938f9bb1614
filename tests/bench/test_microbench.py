"""bench/micro (pytest-benchmark, `make microbench`) stays runnable: each benchmark runs once,
untimed, and its assertions hold. The timings themselves are never part of the test run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_microbenchmarks_run_once_untimed() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "bench/micro", "-q", "-p", "no:cacheprovider",
                             "--benchmark-disable"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
