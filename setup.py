"""Builds the native extensions `engine._C`, `gateway._native` and `security._native` (and
`engine._C_cuda` where a GPU is) with CMake (see CMakeLists.txt)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def build_cuda() -> bool:
    """LLMAAS_BUILD_CUDA=1/0 forces the CUDA module (engine._C_cuda) on or off; unset, it is built
    where nvcc and a GPU are both present, so CPU machines with a CUDA toolkit skip the slow part."""
    forced = os.environ.get("LLMAAS_BUILD_CUDA", "")
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise SystemExit(f"LLMAAS_BUILD_CUDA={forced!r}: expected 0 or 1")
    if shutil.which("nvcc") is None or shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if ext.name in (CUDA_MODULE, GATEWAY_MODULE, SECURITY_MODULE):  # CMake built them with engine._C (one configure)
            return
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DLLMAAS_GATEWAY_OUTPUT_DIR={Path(self.get_ext_fullpath(GATEWAY_MODULE)).parent.resolve()}",
            f"-DLLMAAS_SECURITY_OUTPUT_DIR={Path(self.get_ext_fullpath(SECURITY_MODULE)).parent.resolve()}",
        ]
        cmake_args.append(f"-DLLMAAS_WITH_CUDA={'ON' if build_cuda() else 'OFF'}")
        if os.environ.get("LLMAAS_CUDA_ARCHS"):
            cmake_args.append(f"-DLLMAAS_CUDA_ARCHS={os.environ['LLMAAS_CUDA_ARCHS']}")
        subprocess.run(["cmake", str(ROOT), *cmake_args], cwd=build_temp, check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", ".", "--config", config, "-j", jobs], cwd=build_temp, check=True)


CUDA_MODULE = "engine._C_cuda"
GATEWAY_MODULE = "gateway._native"
SECURITY_MODULE = "security._native"
# Every module is declared so that setuptools copies each into the source tree (--inplace) or the
# wheel; the CUDA one only where it is built.
EXT_MODULES = [CMakeExtension("engine._C"), CMakeExtension(GATEWAY_MODULE), CMakeExtension(SECURITY_MODULE)]
EXT_MODULES += [CMakeExtension(CUDA_MODULE)] if build_cuda() else []

setup(ext_modules=EXT_MODULES, cmdclass={"build_ext": CMakeBuild})
