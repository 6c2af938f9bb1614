"""load_gguf on a tiny random Phi-3 converted as llama.cpp does (q/k/v fused in attn_qkv, gate/up in
ffn_up, Q/K rows in HF's order): the config, weights equal to the HF loader's split, logits against
transformers, quantized matrices split by rows, longrope refused."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import PreTrainedModel

from engine.loader.errors import ModelLoadError
from engine.loader.gguf_loader import Q4_1_SUFFIX, load_gguf
from engine.loader.hf_loader import load_hf_folder
from engine.loader.llama_layout import expected_shapes
from tests.loader.helpers import checkpoint_tensors, prefill_logits, tiny_phi3_model, write_llama_gguf


@dataclass(frozen=True)
class TinyPhi3:
    folder: Path  # save_pretrained output
    model: PreTrainedModel
    tensors: dict[str, torch.Tensor]  # the checkpoint's, float32, q/k/v and gate/up fused
    gguf: Path  # their F32 conversion


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> TinyPhi3:
    torch.manual_seed(0)
    model = tiny_phi3_model()
    folder = tmp_path_factory.mktemp("tiny_phi3")
    model.save_pretrained(folder)
    tensors = checkpoint_tensors(model)
    path = tmp_path_factory.mktemp("tiny_phi3_gguf") / "tiny.gguf"
    write_llama_gguf(path, model.config, tensors)
    return TinyPhi3(folder, model, tensors, path)


def test_config_equals_the_hf_loaders(tiny_phi3: TinyPhi3) -> None:
    config, _, _ = load_gguf(str(tiny_phi3.gguf), torch.float32)

    assert config.architecture == "phi3"
    assert (config.head_dim, config.num_kv_heads) == (16, 2)
    assert config.max_position_embeddings == 64  # the sliding window's, not context_length's 256
    assert config == load_hf_folder(str(tiny_phi3.folder), torch.float32)[0]


def test_no_sliding_window_keeps_the_context(tiny_phi3: TinyPhi3, tmp_path: Path) -> None:
    cfg = copy.deepcopy(tiny_phi3.model.config)
    cfg.sliding_window = None  # as Phi-4's: the converter writes 0
    path = tmp_path / "no_window.gguf"
    write_llama_gguf(path, cfg, tiny_phi3.tensors)

    config, _, _ = load_gguf(str(path), torch.float32)

    assert config.max_position_embeddings == 256


def test_weights_equal_the_hf_loaders_split(tiny_phi3: TinyPhi3) -> None:
    _, weights, _ = load_gguf(str(tiny_phi3.gguf), torch.float32)

    _, want = load_hf_folder(str(tiny_phi3.folder), torch.float32)
    assert weights.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(weights[name], tensor), name


def test_logits_match_transformers(tiny_phi3: TinyPhi3) -> None:
    config, weights, _ = load_gguf(str(tiny_phi3.gguf), torch.float32)
    prompt = torch.randint(0, config.vocab_size, (19,), generator=torch.Generator().manual_seed(1)).tolist()

    got = prefill_logits(config, weights, prompt)

    with torch.inference_mode():
        want = tiny_phi3.model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1], ids=lambda q: q.name)
def test_quantized_file_splits_by_rows(qtype: Q, tiny_phi3: TinyPhi3, tmp_path: Path) -> None:
    def encode(w: np.ndarray) -> tuple[np.ndarray, Q]:
        return gguf.quants.quantize(w, qtype), qtype

    path = tmp_path / f"{qtype.name}.gguf"
    write_llama_gguf(path, tiny_phi3.model.config, tiny_phi3.tensors, encode)

    config, weights, _ = load_gguf(str(path), torch.float32, keep_q4_1=True)

    shapes = {name: tuple(w.shape) for name, w in weights.items() if not name.endswith(Q4_1_SUFFIX)}
    assert shapes == expected_shapes(config)
    kept = {name.removesuffix(Q4_1_SUFFIX): w for name, w in weights.items() if name.endswith(Q4_1_SUFFIX)}
    linears = {name for name in shapes if name.endswith(("_proj.weight", "lm_head.weight"))}
    assert kept.keys() == (linears if qtype == Q.Q4_1 else set())
    # Quantization blocks lie within rows: the file's fused matrix, dequantized and cut into q/k/v (gate/up)
    # rows, is each part, and the parts' kept blocks, concatenated as the decoder does, are the file's.
    q, kv, inter = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim, config.intermediate_size
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        for fused, parts in (
            ("self_attn.qkv_proj", {"self_attn.q_proj": q, "self_attn.k_proj": kv, "self_attn.v_proj": kv}),
            ("mlp.gate_up_proj", {"mlp.gate_proj": inter, "mlp.up_proj": inter}),
        ):
            original = tiny_phi3.tensors[p + fused + ".weight"].numpy()
            blocks = gguf.quants.quantize(original, qtype)
            values = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).reshape(original.shape))
            names = [p + part + ".weight" for part in parts]
            for name, value in zip(names, values.split(list(parts.values()))):
                assert torch.equal(weights[name], value), name
            if qtype == Q.Q4_1:
                assert np.array_equal(torch.cat([kept[n] for n in names]).numpy(), blocks), fused


def test_longrope_file_is_refused(tiny_phi3: TinyPhi3, tmp_path: Path) -> None:
    # Phi-3's 128k models: llama.cpp's converter writes the long and short factors as tensors.
    cfg = copy.deepcopy(tiny_phi3.model.config)
    half = cfg.hidden_size // cfg.num_attention_heads // 2
    cfg.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": [2.0] * half,
                           "short_factor": [1.0] * half}
    path = tmp_path / "longrope.gguf"
    write_llama_gguf(path, cfg, tiny_phi3.tensors)

    with pytest.raises(ModelLoadError, match="longrope.gguf: longrope rotary scaling .* is unsupported"):
        load_gguf(str(path), torch.float32)
