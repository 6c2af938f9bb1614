"""load_gguf on a tiny random model of each architecture beyond llama (the mixtures of experts included), converted as llama.cpp's converter
does (tests/loader/helpers.py write_llama_gguf): the config, the weights and the logits are those the
Hugging Face folder gives, and transformers' logits. What is particular to one architecture is tested in
its own file (test_gguf_qwen.py, test_gguf_granite.py, test_gguf_phi3.py)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import PreTrainedModel

from engine.loader.gguf_loader import Q4_1_SUFFIX, load_gguf
from engine.loader.hf_loader import load_hf_folder
from tests.loader.helpers import (TinyGguf, load_quantized, prefill_logits, quantized_gguf, tiny_gemma3_model,
                                  tiny_gguf, tiny_granite_model, tiny_moe_model, tiny_phi3_model, tiny_qwen_model)

MODELS: dict[str, Callable[[], PreTrainedModel]] = {
    "qwen2": lambda: tiny_qwen_model("qwen2"),
    "qwen3": lambda: tiny_qwen_model("qwen3"),
    "granite": tiny_granite_model,  # Q/K rows permuted in the file, as llama's
    "phi3": tiny_phi3_model,  # q/k/v and gate/up fused in the file
    # Mixtures of experts: the experts stacked per projection in the file
    "mixtral": lambda: tiny_moe_model("mixtral"),  # a llama file with experts, Q/K rows permuted
    "qwen3moe": lambda: tiny_moe_model("qwen3_moe"),
    "granitemoe": lambda: tiny_moe_model("granitemoe"),  # Q/K rows permuted, Granite's scales
    "gemma3": tiny_gemma3_model,  # four norms a layer, gains stored as 1 + w; local and global layers
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


def test_a_q4_1_file_runs_with_its_blocks_kept(tiny: tuple[str, TinyGguf], tmp_path: Path) -> None:
    """As the engine loads a file on a CPU with the Q4_1 kernel: blocks kept beside the bf16 weights; each
    model takes the blocks it reads, drops the others (Gemma 3's per-op path reads none), and decodes as
    from the bf16 weights alone."""
    _, model = tiny
    path = str(quantized_gguf(model, GGMLQuantizationType.Q4_1, tmp_path))
    prompt = torch.randint(0, model.model.config.vocab_size, (4,), generator=torch.Generator().manual_seed(2)).tolist()
    logits = []
    for keep in (True, False):
        config, weights, _ = load_gguf(path, torch.bfloat16, keep_q4_1=keep)
        assert any(name.endswith(Q4_1_SUFFIX) for name in weights) == keep
        logits.append(prefill_logits(config, weights, prompt, torch.bfloat16))
    assert torch.equal(logits[0], logits[1])


@pytest.fixture(scope="module", params=["mixtral", "qwen3moe", "granitemoe"])
def tiny_moe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyGguf:
    torch.manual_seed(0)
    return tiny_gguf(tmp_path_factory, request.param, MODELS[request.param]())


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_1])
def test_quantized_experts_dequantize_to_the_checkpoints(tiny_moe: TinyGguf, qtype: GGMLQuantizationType,
                                                         tmp_path: Path) -> None:
    """A MoE file's stacked experts quantized as llama.cpp quantizes them (block by block along each row) come
    back split, near the checkpoint; their Q4_1 blocks are not kept (the bf16 kernel reads the experts)."""
    model = tiny_moe
    _, weights, kept = load_quantized(model, qtype, tmp_path)

    _, want = load_hf_folder(str(model.folder), torch.float32)
    experts = [name for name in want if ".experts." in name]
    assert experts and not any(".experts." in name for name in kept)
    assert "model.layers.0.self_attn.o_proj.weight" in kept or qtype != GGMLQuantizationType.Q4_1
    for name in experts:
        # a block's scale is its largest magnitude / 127 (Q8_0) or its range / 15 (Q4_1)
        step = want[name].abs().max() / (127 if qtype == GGMLQuantizationType.Q8_0 else 7)
        torch.testing.assert_close(weights[name], want[name], atol=float(step), rtol=0)
