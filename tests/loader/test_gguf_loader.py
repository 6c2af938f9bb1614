"""load_gguf: the shipped SmolLM2 file against transformers, a converted tiny Llama, every quant type, errors."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import LlamaForCausalLM

from engine.loader.errors import ModelLoadError
from engine.loader.gguf_loader import ROPE_FREQS, load_gguf
from engine.loader.hf_loader import load_hf_folder
from tests.loader.conftest import TinyLlama
from tests.loader.helpers import llamacpp_matrix, random_blocks, tiny_llama_config, write_llama_gguf


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: str) -> tuple:
    return load_gguf(smollm2_gguf, torch.float32)


@pytest.mark.slow
def test_smollm2_config(smollm2: tuple) -> None:
    config, weights, _ = smollm2
    assert (config.architecture, config.num_layers, config.hidden_size, config.intermediate_size) == (
        "llama", 30, 576, 1536)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (9, 3, 64, 49152)
    assert config.tie_word_embeddings and "lm_head.weight" not in weights
    assert config.rope_theta == 100000.0 and config.rope_scaling is None
    assert config.rms_norm_eps == 1e-5
    assert config.max_position_embeddings == 8192
    assert (config.bos_token_id, config.eos_token_ids) == (1, (2,))


@pytest.mark.slow
def test_smollm2_metadata_is_plain_python(smollm2: tuple) -> None:
    metadata = smollm2[2]
    assert len(metadata["tokenizer.ggml.tokens"]) == 49152
    assert isinstance(metadata["tokenizer.ggml.tokens"][0], str)
    assert isinstance(metadata["tokenizer.ggml.merges"][0], str)
    assert isinstance(metadata["tokenizer.ggml.token_type"][0], int)
    assert isinstance(metadata["tokenizer.chat_template"], str)
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    assert not any(key.startswith("GGUF.") for key in metadata)


@pytest.mark.slow
def test_smollm2_weights_equal_transformers_gguf_loader(smollm2: tuple, smollm2_gguf: str) -> None:
    _, ours, _ = smollm2
    model = LlamaForCausalLM.from_pretrained(
        os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf), dtype=torch.float32
    )
    reference = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert ours[name].dtype == torch.float32
        assert torch.equal(ours[name], tensor), name


def test_tiny_llama_round_trips_exactly(tiny_llama: TinyLlama, tiny_llama_gguf: Path) -> None:
    config, weights, metadata = load_gguf(str(tiny_llama_gguf), torch.float32)

    hf_config, _ = load_hf_folder(str(tiny_llama.folder), torch.float32)
    # llama.cpp stores llama3 scaling as the rope_freqs tensor, not as metadata
    assert config == dataclasses.replace(hf_config, rope_scaling=None)
    assert weights.keys() == tiny_llama.state_dict.keys() | {ROPE_FREQS}
    for name, tensor in tiny_llama.state_dict.items():
        assert torch.equal(weights[name], tensor), name
    assert metadata["tokenizer.chat_template"] == "{{ messages }}"


def test_rope_freqs_reproduce_hf_llama3_frequencies(tiny_llama: TinyLlama, tiny_llama_gguf: Path) -> None:
    config, weights, _ = load_gguf(str(tiny_llama_gguf), torch.bfloat16)

    freqs = weights[ROPE_FREQS]
    assert freqs.dtype == torch.float32 and freqs.shape == (config.head_dim // 2,)
    default = config.rope_theta ** -(torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim)
    torch.testing.assert_close((default / freqs).float(), tiny_llama.inv_freq, rtol=1e-5, atol=0)


def test_requested_dtype(tiny_llama_gguf: Path) -> None:
    _, weights, _ = load_gguf(str(tiny_llama_gguf), torch.float16)
    assert {t.dtype for name, t in weights.items() if name != ROPE_FREQS} == {torch.float16}


# Bound on |dequantized - original| relative to the tensor's largest magnitude.
QUANTIZABLE = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 8e-3, Q.Q8_0: 1 / 127, Q.Q5_1: 1 / 15, Q.Q5_0: 1 / 16,
               Q.Q4_1: 1 / 7, Q.Q4_0: 1 / 8}


@pytest.mark.parametrize("qtype", list(QUANTIZABLE), ids=lambda q: q.name)
def test_quantized_matrices_load_like_gguf_py(qtype: Q, tiny_llama: TinyLlama, tmp_path: Path) -> None:
    def encode(w: np.ndarray) -> tuple[np.ndarray, Q | None]:
        data = gguf.quants.quantize(w, qtype)
        return data, (qtype if data.dtype == np.uint8 else None)

    path = tmp_path / f"{qtype.name}.gguf"
    cfg = tiny_llama.hf_config
    write_llama_gguf(path, cfg, tiny_llama.state_dict, encode)

    _, weights, _ = load_gguf(str(path), torch.float32)

    for name, original in tiny_llama.state_dict.items():
        stored = llamacpp_matrix(name, original.numpy(), cfg)
        if stored.ndim == 1:
            assert torch.equal(weights[name], original), name
            continue
        expected = gguf.quants.dequantize(gguf.quants.quantize(stored, qtype), qtype)
        back = llamacpp_matrix(name, weights[name].numpy(), cfg)
        assert np.array_equal(back, expected.reshape(stored.shape)), name
        error = (weights[name] - original).abs().max().item()
        assert error <= QUANTIZABLE[qtype] * original.abs().max().item(), (name, error)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q3_K], ids=lambda q: q.name)
def test_k_quant_matrices_load_like_gguf_py(qtype: Q, tmp_path: Path) -> None:
    # gguf-py cannot quantize k-quants: store random valid 256-wide blocks and compare decodings.
    cfg = tiny_llama_config(hidden_size=256, intermediate_size=256, num_hidden_layers=1, vocab_size=64,
                            rope_scaling=None)
    state = {k: v.detach() for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    rng = np.random.default_rng(int(qtype))
    stored: dict[str, np.ndarray] = {}

    def encode(w: np.ndarray) -> tuple[np.ndarray, Q]:
        blocks = random_blocks(rng, w.size // 256, qtype).reshape(w.shape[0], -1)
        stored[f"{w.shape}#{len(stored)}"] = blocks
        return blocks, qtype

    path = tmp_path / f"{qtype.name}.gguf"
    write_llama_gguf(path, cfg, state, encode)

    _, weights, _ = load_gguf(str(path), torch.float32)

    matrices = [name for name, t in state.items() if t.ndim == 2]
    for name, blocks in zip(matrices, stored.values()):
        expected = gguf.quants.dequantize(blocks, qtype)
        assert np.array_equal(llamacpp_matrix(name, weights[name].numpy(), cfg), expected), name


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.gguf")
    with pytest.raises(ModelLoadError, match="absent.gguf.*not found"):
        load_gguf(path, torch.float32)


@pytest.mark.parametrize("content", [b"", b"GGUF" + bytes(range(256)) * 4, os.urandom(4096)],
                         ids=["empty", "bad-header", "random"])
def test_garbage_file(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="garbage.gguf"):
        load_gguf(str(path), torch.float32)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file(keep: float, tiny_llama_gguf: Path, tmp_path: Path) -> None:
    data = tiny_llama_gguf.read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match="truncated.gguf"):
        load_gguf(str(path), torch.float32)


def test_unknown_architecture(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    path = tmp_path / "falcon.gguf"
    write_llama_gguf(path, tiny_llama.hf_config, tiny_llama.state_dict, arch="falcon")
    supported = r"\(supported: llama, qwen2, qwen3, granite, phi3, qwen3moe, granitemoe, gemma3\)"
    with pytest.raises(ModelLoadError, match=rf"falcon.gguf.*unsupported architecture 'falcon' {supported}"):
        load_gguf(str(path), torch.float32)


def test_missing_tensor(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    state = dict(tiny_llama.state_dict)
    del state["model.layers.1.mlp.up_proj.weight"]
    path = tmp_path / "incomplete.gguf"
    write_llama_gguf(path, tiny_llama.hf_config, state)
    with pytest.raises(ModelLoadError, match="incomplete.gguf.*missing tensors model.layers.1.mlp.up_proj"):
        load_gguf(str(path), torch.float32)


def test_unsupported_tensor_type(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    path = tmp_path / "ints.gguf"
    write_llama_gguf(path, tiny_llama.hf_config, tiny_llama.state_dict,
                     lambda w: (w.astype(np.int32), None))
    with pytest.raises(ModelLoadError, match="ints.gguf.*unsupported quantization.*I32"):
        load_gguf(str(path), torch.float32)
