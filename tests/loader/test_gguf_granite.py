"""load_gguf on a tiny random Granite converted as llama.cpp does (its scales as metadata, Q/K rows
permuted as in a llama file): the config's scales, exact weights, logits against transformers."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from engine.loader.errors import ModelLoadError
from engine.loader.gguf_loader import load_gguf
from engine.loader.hf_loader import load_hf_folder
from tests.loader.helpers import checkpoint_tensors, prefill_logits, tiny_granite_model, write_llama_gguf


@dataclass(frozen=True)
class TinyGranite:
    folder: Path  # save_pretrained output
    model: PreTrainedModel
    tensors: dict[str, torch.Tensor]  # the checkpoint's, float32
    gguf: Path  # their F32 conversion


@pytest.fixture(scope="module")
def tiny_granite(tmp_path_factory: pytest.TempPathFactory) -> TinyGranite:
    torch.manual_seed(0)
    model = tiny_granite_model()
    folder = tmp_path_factory.mktemp("tiny_granite")
    model.save_pretrained(folder)
    tensors = checkpoint_tensors(model)
    path = tmp_path_factory.mktemp("tiny_granite_gguf") / "tiny.gguf"
    write_llama_gguf(path, model.config, tensors)
    return TinyGranite(folder, model, tensors, path)


def test_config_has_the_granite_scales(tiny_granite: TinyGranite) -> None:
    config, _, _ = load_gguf(str(tiny_granite.gguf), torch.float32)

    assert config.architecture == "granite"
    # Stored as float32; the metadata reader's shortest round-trip decimal gives 0.22 back exactly.
    assert (config.embedding_multiplier, config.residual_multiplier, config.attention_multiplier,
            config.logits_scaling) == (12.0, 0.22, 0.0625, 8.0)
    assert config.tie_word_embeddings
    assert config == load_hf_folder(str(tiny_granite.folder), torch.float32)[0]


def test_weights_equal_the_checkpoint(tiny_granite: TinyGranite) -> None:
    _, weights, _ = load_gguf(str(tiny_granite.gguf), torch.float32)

    assert weights.keys() == tiny_granite.tensors.keys()
    for name, tensor in tiny_granite.tensors.items():  # q_proj and k_proj only if their rows were unpermuted
        assert torch.equal(weights[name], tensor), name


def test_logits_match_transformers(tiny_granite: TinyGranite) -> None:
    config, weights, _ = load_gguf(str(tiny_granite.gguf), torch.float32)
    prompt = torch.randint(0, config.vocab_size, (19,), generator=torch.Generator().manual_seed(1)).tolist()

    got = prefill_logits(config, weights, prompt)

    with torch.inference_mode():
        want = tiny_granite.model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


def test_missing_scales_mean_what_they_do_in_llama_cpp(tiny_granite: TinyGranite, tmp_path: Path) -> None:
    # The converter leaves out a multiplier config.json sets to 0; llama.cpp then applies no embedding
    # or residual scale and head_dim ** -0.5 to the attention scores.
    cfg = copy.deepcopy(tiny_granite.model.config)
    cfg.embedding_multiplier = cfg.residual_multiplier = cfg.attention_multiplier = 0.0
    path = tmp_path / "unscaled.gguf"
    write_llama_gguf(path, cfg, tiny_granite.tensors)

    config, _, _ = load_gguf(str(path), torch.float32)

    assert (config.embedding_multiplier, config.residual_multiplier, config.attention_multiplier,
            config.logits_scaling) == (1.0, 1.0, None, 8.0)


def test_a_missing_logit_scale_is_refused(tiny_granite: TinyGranite, tmp_path: Path) -> None:
    cfg = copy.deepcopy(tiny_granite.model.config)
    cfg.logits_scaling = 0.0
    path = tmp_path / "no_logit_scale.gguf"
    write_llama_gguf(path, cfg, tiny_granite.tensors)

    # llama.cpp's granite requires the key too.
    with pytest.raises(ModelLoadError, match="no_logit_scale.gguf: missing metadata key granite.logit_scale"):
        load_gguf(str(path), torch.float32)
