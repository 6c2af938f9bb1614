"""load_gguf on a tiny random Phi-3 converted as llama.cpp does (q/k/v fused in attn_qkv, gate/up in
ffn_up, Q/K rows in HF's order): its sliding window on every layer, quantized matrices split by rows,
longrope refused. Weights and logits (the HF loader's split): test_gguf_families.py."""
from __future__ import annotations

import copy
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from engine.loader.errors import ModelLoadError
from engine.loader.gguf_loader import load_gguf
from tests.loader.helpers import TinyGguf, load_quantized, tiny_gguf, tiny_phi3_model, write_llama_gguf


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> TinyGguf:
    torch.manual_seed(0)
    return tiny_gguf(tmp_path_factory, "phi3", tiny_phi3_model())


def test_the_sliding_window_is_every_layers(tiny_phi3: TinyGguf) -> None:
    config, _, _ = load_gguf(str(tiny_phi3.gguf), torch.float32)

    assert (config.head_dim, config.num_kv_heads) == (16, 2)
    assert config.max_position_embeddings == 256
    assert (config.sliding_window, config.sliding_layers) == (64, (0, 1))


def test_no_sliding_window_keeps_the_context(tiny_phi3: TinyGguf, tmp_path: Path) -> None:
    cfg = copy.deepcopy(tiny_phi3.model.config)
    cfg.sliding_window = None  # as Phi-4's: the converter writes 0
    path = tmp_path / "no_window.gguf"
    write_llama_gguf(path, cfg, tiny_phi3.tensors)

    config, _, _ = load_gguf(str(path), torch.float32)

    assert (config.max_position_embeddings, config.sliding_window, config.sliding_layers) == (256, 0, ())


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1], ids=lambda q: q.name)
def test_quantized_file_splits_by_rows(qtype: Q, tiny_phi3: TinyGguf, tmp_path: Path) -> None:
    config, weights, kept = load_quantized(tiny_phi3, qtype, tmp_path)

    linears = {name for name in weights if name.endswith(("_proj.weight", "lm_head.weight"))}
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


def test_longrope_file_is_refused(tiny_phi3: TinyGguf, tmp_path: Path) -> None:
    # Phi-3's 128k models: llama.cpp's converter writes the long and short factors as tensors.
    cfg = copy.deepcopy(tiny_phi3.model.config)
    half = cfg.hidden_size // cfg.num_attention_heads // 2
    cfg.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": [2.0] * half,
                           "short_factor": [1.0] * half}
    path = tmp_path / "longrope.gguf"
    write_llama_gguf(path, cfg, tiny_phi3.tensors)

    with pytest.raises(ModelLoadError, match="longrope.gguf: longrope rotary scaling .* is unsupported"):
        load_gguf(str(path), torch.float32)
