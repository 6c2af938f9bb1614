"""The CUDA kernels (csrc/cuda/) compile for Hopper (sm_90a) wherever nvcc is installed, GPU or not,
and their bindings compile as C++: CI's proof that the GPU build is not broken."""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "csrc" / "cuda"
NVCC = shutil.which("nvcc") or (p if Path(p := "/usr/local/cuda/bin/nvcc").exists() else None)


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_cuda_sources_compile_for_sm90a(tmp_path: Path) -> None:
    sources = sorted(CUDA_DIR.glob("*.cu"))
    assert {s.name for s in sources} >= {"paged_attention.cu", "cache_write.cu"}
    procs = [
        subprocess.Popen([NVCC, "-arch=sm_90a", "-std=c++17", "-O3", "--use_fast_math", "-Werror=all-warnings",
                          "-c", str(src), "-o", str(tmp_path / f"{src.stem}.o")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for src in sources
    ]
    for src, proc in zip(sources, procs):
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{src.name} failed to compile:\n{output}"
        assert (tmp_path / f"{src.stem}.o").stat().st_size > 0


def test_cuda_bindings_compile_as_cpp() -> None:
    pybind11 = pytest.importorskip("pybind11")
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-I{pybind11.get_include()}",
           f"-I{sysconfig.get_paths()['include']}", f"-I{CUDA_DIR}", str(CUDA_DIR / "cuda_bindings.cpp")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
