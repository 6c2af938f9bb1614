"""load_gguf on a tiny random Granite converted as llama.cpp does (its scales as metadata, Q/K rows
permuted as in a llama file): the config's scales, and missing ones read as llama.cpp reads them.
Weights and logits: test_gguf_families.py."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from engine.loader.errors import ModelLoadError
from engine.loader.gguf_loader import load_gguf
from tests.loader.helpers import TinyGguf, tiny_gguf, tiny_granite_model, write_llama_gguf


@pytest.fixture(scope="module")
def tiny_granite(tmp_path_factory: pytest.TempPathFactory) -> TinyGguf:
    torch.manual_seed(0)
    return tiny_gguf(tmp_path_factory, "granite", tiny_granite_model())


def test_config_has_the_granite_scales(tiny_granite: TinyGguf) -> None:
    config, _, _ = load_gguf(str(tiny_granite.gguf), torch.float32)

    assert config.architecture == "granite"
    # Stored as float32; the metadata reader's shortest round-trip decimal gives 0.22 back exactly.
    assert (config.embedding_multiplier, config.residual_multiplier, config.attention_multiplier,
            config.logits_scaling) == (12.0, 0.22, 0.0625, 8.0)
    assert config.tie_word_embeddings


def test_missing_scales_mean_what_they_do_in_llama_cpp(tiny_granite: TinyGguf, tmp_path: Path) -> None:
    # The converter leaves out a multiplier config.json sets to 0; llama.cpp then applies no embedding
    # or residual scale and head_dim ** -0.5 to the attention scores.
    cfg = copy.deepcopy(tiny_granite.model.config)
    cfg.embedding_multiplier = cfg.residual_multiplier = cfg.attention_multiplier = 0.0
    path = tmp_path / "unscaled.gguf"
    write_llama_gguf(path, cfg, tiny_granite.tensors)

    config, _, _ = load_gguf(str(path), torch.float32)

    assert (config.embedding_multiplier, config.residual_multiplier, config.attention_multiplier,
            config.logits_scaling) == (1.0, 1.0, None, 8.0)


def test_a_missing_logit_scale_is_refused(tiny_granite: TinyGguf, tmp_path: Path) -> None:
    cfg = copy.deepcopy(tiny_granite.model.config)
    cfg.logits_scaling = 0.0
    path = tmp_path / "no_logit_scale.gguf"
    write_llama_gguf(path, cfg, tiny_granite.tensors)

    # llama.cpp's granite requires the key too.
    with pytest.raises(ModelLoadError, match="no_logit_scale.gguf: missing metadata key granite.logit_scale"):
        load_gguf(str(path), torch.float32)
