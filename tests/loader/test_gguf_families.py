"""load_gguf on a tiny random model of each architecture beyond llama, converted as llama.cpp's converter
does (tests/loader/helpers.py write_llama_gguf): the config, the weights and the logits are those the
Hugging Face folder gives, and transformers' logits. What is particular to one architecture is tested in
its own file (test_gguf_qwen.py, test_gguf_granite.py, test_gguf_phi3.py)."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedModel

from engine.loader.gguf_loader import load_gguf
from engine.loader.hf_loader import load_hf_folder
from tests.loader.helpers import (TinyGguf, prefill_logits, tiny_gguf, tiny_granite_model, tiny_phi3_model,
                                  tiny_qwen_model)

MODELS: dict[str, Callable[[], PreTrainedModel]] = {
    "qwen2": lambda: tiny_qwen_model("qwen2"),
    "qwen3": lambda: tiny_qwen_model("qwen3"),
    "granite": tiny_granite_model,  # Q/K rows permuted in the file, as llama's
    "phi3": tiny_phi3_model,  # q/k/v and gate/up fused in the file
}


@pytest.fixture(scope="module", params=list(MODELS))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, TinyGguf]:
    torch.manual_seed(0)
    return request.param, tiny_gguf(tmp_path_factory, request.param, MODELS[request.param]())


def test_config_equals_the_hf_loaders(tiny: tuple[str, TinyGguf]) -> None:
    arch, model = tiny
    config, _, _ = load_gguf(str(model.gguf), torch.float32)

    assert config.architecture == arch
    assert config == load_hf_folder(str(model.folder), torch.float32)[0]


def test_weights_equal_the_hf_loaders(tiny: tuple[str, TinyGguf]) -> None:
    _, model = tiny
    _, weights, _ = load_gguf(str(model.gguf), torch.float32)

    _, want = load_hf_folder(str(model.folder), torch.float32)
    assert weights.keys() == want.keys()
    for name, tensor in want.items():  # exact: Q/K rows unpermuted and fused projections split where due
        assert torch.equal(weights[name], tensor), name


def test_logits_match_transformers(tiny: tuple[str, TinyGguf]) -> None:
    _, model = tiny
    config, weights, _ = load_gguf(str(model.gguf), torch.float32)
    prompt = torch.randint(0, config.vocab_size, (19,), generator=torch.Generator().manual_seed(1)).tolist()

    got = prefill_logits(config, weights, prompt)

    with torch.inference_mode():
        want = model.model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
