"""One entry point from a model name or path to config, weights and tokenizer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config import ModelConfig
from engine.loader.gguf_loader import load_gguf
from engine.loader.hf_loader import load_hf_folder
from engine.loader.registry import resolve_model
from engine.tokenizer import Tokenizer


@dataclass(slots=True)
class LoadedModel:
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer


def load_model(name_or_path: str, dtype: torch.dtype) -> LoadedModel:
    resolved = resolve_model(name_or_path)
    if resolved.kind == "gguf":
        config, weights, metadata = load_gguf(resolved.path, dtype)
        return LoadedModel(config, weights, Tokenizer.from_gguf_metadata(metadata))
    config, weights = load_hf_folder(resolved.path, dtype)
    return LoadedModel(config, weights, Tokenizer.from_hf_dir(resolved.path))
