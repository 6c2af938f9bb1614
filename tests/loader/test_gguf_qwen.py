"""load_gguf on tiny random Qwen2 and Qwen3 models converted as llama.cpp does (Q/K rows kept in HF's
order): the config and exact weights, logits against transformers, quantized matrices."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import PreTrainedModel

from engine.loader.gguf_loader import Q4_1_SUFFIX, load_gguf
from engine.loader.hf_loader import load_hf_folder
from engine.loader.llama_layout import expected_shapes
from tests.loader.helpers import checkpoint_tensors, prefill_logits, tiny_qwen_model, write_llama_gguf


@dataclass(frozen=True)
class TinyQwen:
    arch: str  # "qwen2" or "qwen3", as general.architecture
    folder: Path  # save_pretrained output
    model: PreTrainedModel
    tensors: dict[str, torch.Tensor]  # the checkpoint's, float32
    gguf: Path  # their F32 conversion


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def tiny_qwen(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyQwen:
    torch.manual_seed(0)
    model = tiny_qwen_model(request.param)
    folder = tmp_path_factory.mktemp(f"tiny_{request.param}")
    model.save_pretrained(folder)
    tensors = checkpoint_tensors(model)
    path = tmp_path_factory.mktemp(f"tiny_{request.param}_gguf") / "tiny.gguf"
    write_llama_gguf(path, model.config, tensors)
    return TinyQwen(request.param, folder, model, tensors, path)


def test_config_has_the_architecture_flags(tiny_qwen: TinyQwen) -> None:
    config, _, _ = load_gguf(str(tiny_qwen.gguf), torch.float32)

    qwen3 = tiny_qwen.arch == "qwen3"
    assert config.architecture == tiny_qwen.arch
    assert (config.qkv_bias, config.qk_norm) == (not qwen3, qwen3)
    assert config.head_dim == (16 if qwen3 else 64 // 8)  # Qwen3's from key_length, not hidden / heads
    assert config.tie_word_embeddings == qwen3
    assert config == load_hf_folder(str(tiny_qwen.folder), torch.float32)[0]


def test_weights_equal_the_checkpoint(tiny_qwen: TinyQwen) -> None:
    _, weights, _ = load_gguf(str(tiny_qwen.gguf), torch.float32)

    assert weights.keys() == tiny_qwen.tensors.keys()
    for name, tensor in tiny_qwen.tensors.items():
        assert torch.equal(weights[name], tensor), name


def test_logits_match_transformers(tiny_qwen: TinyQwen) -> None:
    config, weights, _ = load_gguf(str(tiny_qwen.gguf), torch.float32)
    prompt = torch.randint(0, config.vocab_size, (19,), generator=torch.Generator().manual_seed(1)).tolist()

    got = prefill_logits(config, weights, prompt)

    with torch.inference_mode():
        want = tiny_qwen.model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1], ids=lambda q: q.name)
def test_quantized_file_loads_in_checkpoint_order(qtype: Q, tiny_qwen: TinyQwen, tmp_path: Path) -> None:
    def encode(w: np.ndarray) -> tuple[np.ndarray, Q]:
        return gguf.quants.quantize(w, qtype), qtype

    path = tmp_path / f"{qtype.name}.gguf"
    write_llama_gguf(path, tiny_qwen.model.config, tiny_qwen.tensors, encode)

    config, weights, _ = load_gguf(str(path), torch.float32, keep_q4_1=True)

    shapes = {name: tuple(w.shape) for name, w in weights.items() if not name.endswith(Q4_1_SUFFIX)}
    assert shapes == expected_shapes(config)
    kept = {name.removesuffix(Q4_1_SUFFIX): w for name, w in weights.items() if name.endswith(Q4_1_SUFFIX)}
    matrices = {name for name, t in tiny_qwen.tensors.items() if t.ndim == 2}
    # Only linears keep their Q4_1 blocks: the embedding is looked up, not multiplied.
    assert kept.keys() == (matrices - {"model.embed_tokens.weight"} if qtype == Q.Q4_1 else set())
    for name, original in tiny_qwen.tensors.items():
        if name not in matrices:  # norms and biases stay F32
            assert torch.equal(weights[name], original), name
            continue
        # No rotary permutation to undo: values, and Q4_1's kept blocks, come in the file's row order.
        blocks = gguf.quants.quantize(original.numpy(), qtype)
        expected = gguf.quants.dequantize(blocks, qtype).reshape(original.shape)
        assert np.array_equal(weights[name].numpy(), expected), name
        if name in kept:
            assert np.array_equal(kept[name].numpy(), blocks), name

