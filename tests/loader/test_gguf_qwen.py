"""load_gguf on tiny random Qwen2 and Qwen3 models converted as llama.cpp does (Q/K rows kept in HF's
order): the architecture's flags, quantized matrices. Weights and logits: test_gguf_families.py."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from engine.loader.gguf_loader import load_gguf
from tests.loader.helpers import TinyGguf, load_quantized, tiny_gguf, tiny_qwen_model


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def tiny_qwen(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, TinyGguf]:
    torch.manual_seed(0)
    return request.param, tiny_gguf(tmp_path_factory, request.param, tiny_qwen_model(request.param))


def test_config_has_the_architecture_flags(tiny_qwen: tuple[str, TinyGguf]) -> None:
    arch, model = tiny_qwen
    config, _, _ = load_gguf(str(model.gguf), torch.float32)

    qwen3 = arch == "qwen3"
    assert (config.qkv_bias, config.qk_norm) == (not qwen3, qwen3)
    assert config.head_dim == (16 if qwen3 else 64 // 8)  # Qwen3's from key_length, not hidden / heads
    assert config.tie_word_embeddings == qwen3


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1], ids=lambda q: q.name)
def test_quantized_file_loads_in_checkpoint_order(qtype: Q, tiny_qwen: tuple[str, TinyGguf], tmp_path: Path) -> None:
    _, model = tiny_qwen
    _, weights, kept = load_quantized(model, qtype, tmp_path)

    matrices = {name for name, t in model.tensors.items() if t.ndim == 2}
    # Only linears keep their Q4_1 blocks: the embedding is looked up, not multiplied.
    assert kept.keys() == (matrices - {"model.embed_tokens.weight"} if qtype == Q.Q4_1 else set())
    for name, original in model.tensors.items():
        if name not in matrices:  # norms and biases stay F32
            assert torch.equal(weights[name], original), name
            continue
        # No rotary permutation to undo: values, and Q4_1's kept blocks, come in the file's row order.
        blocks = gguf.quants.quantize(original.numpy(), qtype)
        expected = gguf.quants.dequantize(blocks, qtype).reshape(original.shape)
        assert np.array_equal(weights[name].numpy(), expected), name
        if name in kept:
            assert np.array_equal(kept[name].numpy(), blocks), name

