"""load_format="dummy": random weights of a folder's exact shapes, for speed tests without a checkpoint."""
from __future__ import annotations

import pytest
import torch

from bench import gpu_models as gm
from engine import LLM, SamplingParams
from engine.config import ModelConfig
from engine.loader.dummy import dummy_weights, load_dummy_config
from engine.loader.errors import ModelLoadError
from engine.loader.llama_layout import expected_shapes
from engine.loader.load import load_model


@pytest.fixture(scope="module")
def config_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("dummy-llama")
    gm.save_config_folder(gm.SMOKE_B, gm.build_tokenizer(), folder)
    return str(folder)


def test_dummy_weights_have_every_expected_shape(config_folder: str) -> None:
    config = load_dummy_config(config_folder)
    assert isinstance(config, ModelConfig) and config.num_layers == gm.SMOKE_B["num_hidden_layers"]
    weights = dummy_weights(config, torch.bfloat16, "cpu", seed=3)
    assert {n: tuple(t.shape) for n, t in weights.items()} == expected_shapes(config)
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    norms = [t for t in weights.values() if t.ndim == 1]
    matrices = [t.float() for t in weights.values() if t.ndim == 2]
    assert norms and all(bool((t == 1).all()) for t in norms)
    flat = torch.cat([m.flatten() for m in matrices])
    assert abs(flat.std().item() - 0.02) < 0.002 and abs(flat.mean().item()) < 0.001
    assert torch.equal(dummy_weights(config, torch.bfloat16, "cpu", seed=3)["model.embed_tokens.weight"],
                       weights["model.embed_tokens.weight"])


def test_dummy_folder_generates_without_reading_weights(config_folder: str) -> None:
    llm = LLM(config_folder, load_format="dummy", dtype=torch.float32, kv_cache_bytes=8 * 2**20)
    [result] = llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    tokens = result.outputs[0].token_ids
    assert len(tokens) == 6 and all(0 <= t < gm.SMOKE_B["vocab_size"] for t in tokens)


def test_a_folder_without_weights_is_refused_by_the_normal_load(config_folder: str) -> None:
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(config_folder, torch.float32)


def test_dummy_refuses_gguf_and_unknown_formats(config_folder: str, tmp_path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")  # refused before it is read
    with pytest.raises(ModelLoadError, match="Hugging Face folder"):
        load_model(str(gguf), torch.float32, load_format="dummy")
    with pytest.raises(ModelLoadError, match="load_format='fast'"):
        load_model(config_folder, torch.float32, load_format="fast")
