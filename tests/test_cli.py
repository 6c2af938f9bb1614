"""`llmaas generate` as a user runs it."""
from __future__ import annotations

import subprocess
import sys


def llmaas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=300)


def test_generate_streams_the_answer() -> None:
    result = llmaas("generate", "What is the capital of France?", "--max-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_generate_raw_with_seed_is_reproducible() -> None:
    args = ("generate", "--raw", "Once upon a time", "--max-tokens", "8", "--temperature", "0.8", "--seed", "3")
    first, second = llmaas(*args), llmaas(*args)
    assert first.returncode == 0 and first.stdout == second.stdout and first.stdout.strip()


def test_generate_reports_a_missing_model_without_traceback() -> None:
    result = llmaas("generate", "hi", "--model", "/nonexistent/model.gguf")
    assert result.returncode == 2
    assert "llmaas: error:" in result.stderr and "Traceback" not in result.stderr


def test_generate_rejects_bad_sampling_values() -> None:
    result = llmaas("generate", "hi", "--temperature", "-1")
    assert result.returncode == 2 and "temperature" in result.stderr
