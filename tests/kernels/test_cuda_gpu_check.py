"""The CPU-checkable parts of bench/gpu_check.sh: its argument handling, its syntax, its 8-minute
budget, and its kernel benchmark run end to end in smoke mode (Triton interpreter, tiny shapes)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_usage_without_outdir() -> None:
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage: bash bench/gpu_check.sh OUTDIR" in result.stderr


def test_script_parses_and_fits_eight_minutes() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=30).returncode == 0
    text = SCRIPT.read_text()
    total = int(re.search(r"GPU_CHECK_TOTAL_S:-(\d+)", text).group(1))
    assert total <= 8 * 60
    for needed in ("bench_kernels_gpu.py", "LLMAAS_BUILD_CUDA=1", "LLMAAS_REQUIRE_CUDA_KERNELS=1", "tests/kernels"):
        assert needed in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_kernel_bench_smoke_writes_every_kernel(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "kernels" / "bench_kernels_gpu.py"), "--out",
                             str(tmp_path), "--smoke"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "kernels.json").read_text())
    kernels = {row["kernel"].split()[0] for row in report["rows"]}
    assert kernels == {"decode_attention", "prefill_attention", "write_kv_cache", "add_rms_norm", "rotary",
                       "silu_and_mul"}
    assert all(row["us"] > 0 and row["floor_us"] > 0 for row in report["rows"])
    assert "| decode_attention triton |" in (tmp_path / "kernels.md").read_text()


def test_engine_check_smoke_runs_every_stage(tmp_path: Path) -> None:
    # The engine half of the check on CPU with tiny shapes: a stage that raises here would cost a
    # GPU run its results.
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_engine_check.py"), "--out", str(tmp_path),
                             "--smoke"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "engine_check.json").read_text())
    assert report["errors"] == [] and report["correctness"]["match_hf_batched"] == report["correctness"]["prompts"]
    assert {(r["model"], r["runner"]) for r in report["throughput"]} == {("tiny-a", "engine"), ("tiny-b", "engine"),
                                                                           ("tiny-b", "transformers")}
    assert set(report["batch_profiles"]) == {"tiny-a", "tiny-b"}
    assert all(p["step_ms"] > 0 for p in report["batch_profiles"].values())
