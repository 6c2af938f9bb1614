"""load_hf_folder: a tiny random Llama saved by transformers, single-file and sharded, and its errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from engine.config import ModelConfig
from engine.loader.errors import ModelLoadError
from engine.loader.hf_loader import config_from_hf, load_hf_folder
from tests.loader.conftest import TinyLlama
from tests.loader.helpers import ROPE_SCALING

EXPECTED_CONFIG = ModelConfig(
    architecture="llama", vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=256,
    tie_word_embeddings=False, rope_scaling=ROPE_SCALING, bos_token_id=1, eos_token_ids=(2,),
)


def _copy(tiny: TinyLlama, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny.folder, tmp_path / "model"))


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))


def test_single_file(tiny_llama: TinyLlama) -> None:
    config, weights = load_hf_folder(str(tiny_llama.folder), torch.float32)

    assert config == EXPECTED_CONFIG
    assert weights.keys() == tiny_llama.state_dict.keys()
    for name, tensor in tiny_llama.state_dict.items():
        assert torch.equal(weights[name], tensor), name


def test_sharded(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    model = LlamaForCausalLM(tiny_llama.hf_config)
    model.load_state_dict(tiny_llama.state_dict)
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1

    config, weights = load_hf_folder(str(tmp_path), torch.bfloat16)

    assert config == EXPECTED_CONFIG
    assert weights.keys() == tiny_llama.state_dict.keys()
    for name, tensor in tiny_llama.state_dict.items():
        assert torch.equal(weights[name], tensor.to(torch.bfloat16)), name


def test_tied_checkpoint_drops_stored_lm_head(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = _copy(tiny_llama, tmp_path)
    _edit_config(folder, tie_word_embeddings=True, eos_token_id=[2, 5])
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 7]}))

    config, weights = load_hf_folder(str(folder), torch.float32)

    assert config.tie_word_embeddings and "lm_head.weight" not in weights
    assert config.eos_token_ids == (2, 5, 7)


def test_older_config_spelling() -> None:
    raw = {
        "architectures": ["MistralForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": None,
        "vocab_size": 300, "max_position_embeddings": 256, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "rope_scaling": {"type": "linear", "factor": 2.0}, "bos_token_id": 1, "eos_token_id": 2,
    }
    config = config_from_hf(raw, "somewhere")
    assert (config.architecture, config.head_dim, config.rope_theta) == ("llama", 16, 500000.0)
    assert config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert not config.tie_word_embeddings


def _raw(**overrides: object) -> dict:
    return {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 256, **overrides}


def test_qwen_configs_set_their_variants() -> None:
    qwen2 = config_from_hf(_raw(architectures=["Qwen2ForCausalLM"], use_sliding_window=False), "q2")
    assert (qwen2.architecture, qwen2.qkv_bias, qwen2.qk_norm) == ("qwen2", True, False)
    qwen3 = config_from_hf(_raw(model_type="qwen3", head_dim=32, attention_bias=False), "q3")
    assert (qwen3.architecture, qwen3.qkv_bias, qwen3.qk_norm, qwen3.head_dim) == ("qwen3", False, True, 32)
    llama = config_from_hf(_raw(architectures=["LlamaForCausalLM"]), "l")
    assert (llama.qkv_bias, llama.qk_norm) == (False, False)
    assert (llama.embedding_multiplier, llama.attention_multiplier, llama.logits_scaling) == (1.0, None, 1.0)


def test_sliding_windows_are_read_as_transformers_reads_them() -> None:
    """Every layer local in Mistral v0.1 and Phi-3-mini; in Qwen2 only with use_sliding_window, from layer
    max_window_layers on; layer_types where given. The context stays the model's own."""
    mistral_v01 = config_from_hf(_raw(architectures=["MistralForCausalLM"], max_position_embeddings=32768,
                                      sliding_window=4096), "m")
    assert mistral_v01.max_position_embeddings == 32768
    assert (mistral_v01.sliding_window, mistral_v01.sliding_layers) == (4096, (0, 1))
    windowed = config_from_hf(_raw(architectures=["Qwen2ForCausalLM"], num_hidden_layers=4, use_sliding_window=True,
                                   sliding_window=64, max_window_layers=1), "q")
    assert (windowed.max_position_embeddings, windowed.sliding_layers) == (256, (1, 2, 3))
    assert [windowed.window_of(i) for i in range(4)] == [0, 64, 64, 64]
    unused = config_from_hf(_raw(architectures=["Qwen2ForCausalLM"], use_sliding_window=False, sliding_window=64), "q")
    assert (unused.sliding_window, unused.sliding_layers) == (0, ())
    named = config_from_hf(_raw(architectures=["MistralForCausalLM"], sliding_window=8,
                                layer_types=["full_attention", "sliding_attention"]), "m")
    assert named.sliding_layers == (1,)
    phi = config_from_hf(_raw(architectures=["Phi3ForCausalLM"], sliding_window=None), "p")
    assert (phi.architecture, phi.max_position_embeddings, phi.sliding_layers) == ("phi3", 256, ())


def test_granite_configs_carry_their_scales() -> None:
    granite = config_from_hf(_raw(architectures=["GraniteForCausalLM"], embedding_multiplier=12.0,
                                  residual_multiplier=0.22, attention_multiplier=0.0078125, logits_scaling=16.0), "g")
    assert granite.architecture == "granite"
    scales = (granite.embedding_multiplier, granite.residual_multiplier, granite.attention_multiplier,
              granite.logits_scaling)
    assert scales == (12.0, 0.22, 0.0078125, 16.0)
    # GraniteConfig's defaults where config.json is silent: an attention multiplier of 1, not 1/sqrt(d).
    bare = config_from_hf(_raw(model_type="granite"), "g")
    assert (bare.embedding_multiplier, bare.attention_multiplier, bare.logits_scaling) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("raw,why", [
    (_raw(architectures=["LlamaForCausalLM"], attention_bias=True), "attention_bias"),
    (_raw(architectures=["Qwen3ForCausalLM"], attention_bias=True), "attention_bias"),
    (_raw(architectures=["GraniteForCausalLM"], mlp_bias=True), "mlp_bias"),
    (_raw(architectures=["Phi3ForCausalLM"], partial_rotary_factor=0.75), "rotary embeddings over part"),
    (_raw(architectures=["Phi3ForCausalLM"], rope_scaling={"rope_type": "longrope", "long_factor": [1.0]}),
     "rope scaling 'longrope'"),
])
def test_variants_the_decoder_does_not_run_are_refused(raw: dict, why: str) -> None:
    with pytest.raises(ModelLoadError, match=f"somewhere: {why}.*unsupported"):
        config_from_hf(raw, "somewhere")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="absent.*not found"):
        load_hf_folder(str(tmp_path / "absent"), torch.float32)


def test_missing_tensor(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = _copy(tiny_llama, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.0.self_attn.v_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=f"{folder}.*missing tensors model.layers.0.self_attn.v_proj"):
        load_hf_folder(str(folder), torch.float32)


def test_extra_tensor(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = _copy(tiny_llama, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match="unexpected tensors model.layers.0.self_attn.q_proj.bias"):
        load_hf_folder(str(folder), torch.float32)


def test_wrong_shape(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = _copy(tiny_llama, tmp_path)
    _edit_config(folder, intermediate_size=96)
    with pytest.raises(ModelLoadError, match="mlp.gate_proj.weight has shape"):
        load_hf_folder(str(folder), torch.float32)


def test_unsupported_architecture(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = _copy(tiny_llama, tmp_path)
    _edit_config(folder, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ModelLoadError, match="unsupported architecture.*GPT2LMHeadModel"):
        load_hf_folder(str(folder), torch.float32)


def test_corrupt_safetensors(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = _copy(tiny_llama, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_hf_folder(str(folder), torch.float32)


def test_missing_config(tiny_llama: TinyLlama, tmp_path: Path) -> None:
    folder = _copy(tiny_llama, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_hf_folder(str(folder), torch.float32)


def test_a_vision_language_checkpoints_language_model_is_read() -> None:
    """Mistral-Small 3.x (Mistral3ForConditionalGeneration): text_config is the model, top-level eos ids
    carry over; tensors of either naming come under the causal LM's, the vision side's are dropped."""
    from engine.loader.multimodal_layout import language_weights

    raw = {"architectures": ["Mistral3ForConditionalGeneration"], "eos_token_id": 2,
           "text_config": _raw(architectures=None, model_type="mistral", head_dim=128, num_attention_heads=32,
                               hidden_size=5120)}
    config = config_from_hf(raw, "m")
    assert (config.architecture, config.head_dim, config.eos_token_ids) == ("llama", 128, (2,))
    one = torch.zeros(1)
    weights = {"language_model.model.layers.0.input_layernorm.weight": one, "language_model.lm_head.weight": one,
               "model.language_model.norm.weight": one, "lm_head.bias": one,
               "vision_tower.transformer.layers.0.attention_norm.weight": one,
               "model.multi_modal_projector.linear_1.weight": one}
    assert sorted(language_weights(weights)) == ["lm_head.bias", "lm_head.weight", "model.layers.0.input_layernorm.weight",
                                                 "model.norm.weight"]
