"""One entry point from a model name or path to config, weights and tokenizer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config import ModelConfig
from engine.loader.dummy import dummy_weights, load_dummy_config
from engine.loader.errors import ModelLoadError
from engine.loader.gguf_loader import Q4_1_SUFFIX, load_gguf
from engine.loader.hf_loader import load_hf_folder
from engine.loader.registry import resolve_model
from engine.tokenizer import Tokenizer


@dataclass(slots=True)
class LoadedModel:
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    path: str  # the resolved .gguf file or Hugging Face folder


LOAD_FORMATS = ("auto", "dummy")


def load_model(name_or_path: str, dtype: torch.dtype, load_format: str = "auto",
               device: torch.device | str = "cpu", keep_q4_1: bool = False, lm_head: bool = True) -> LoadedModel:
    """`load_format` "auto" reads the weights (on the CPU: the runner places them); "dummy" reads only
    a Hugging Face folder's config and tokenizer and makes random weights on `device` (benchmarks).
    keep_q4_1: a GGUF's Q4_1 linears also come as raw blocks (see load_gguf). lm_head False: an
    embedding model's weights, without the output projection (neither needed nor kept)."""
    if load_format not in LOAD_FORMATS:
        raise ModelLoadError(f"load_format={load_format!r}: expected one of {', '.join(LOAD_FORMATS)}")
    resolved = resolve_model(name_or_path)
    if load_format == "dummy":
        if resolved.kind != "hf":
            raise ModelLoadError(f"{resolved.path}: load_format='dummy' needs a Hugging Face folder (config.json)")
        config = load_dummy_config(resolved.path)
        weights = dummy_weights(config, dtype, device, lm_head=lm_head)
        return LoadedModel(config, weights, Tokenizer.from_hf_dir(resolved.path), resolved.path)
    if resolved.kind == "gguf":
        config, weights, metadata = load_gguf(resolved.path, dtype, keep_q4_1)
        if not lm_head:  # the model drops it too; freed here, before the runner packs the rest
            for name in ("lm_head.weight", "lm_head.weight" + Q4_1_SUFFIX):
                weights.pop(name, None)
        return LoadedModel(config, weights, Tokenizer.from_gguf_metadata(metadata), resolved.path)
    config, weights = load_hf_folder(resolved.path, dtype, lm_head)
    return LoadedModel(config, weights, Tokenizer.from_hf_dir(resolved.path), resolved.path)
