"""Gemma 3: its config.json forms (text-only, multimodal with text_config, transformers 4's flat rotary keys,
defaults left out), its weights (the multimodal checkpoints' language model, norm gains as 1 + w), and the
engine's greedy tokens against transformers' past the local layers' window. Logits through chunked prefill
and decode on both CPU attention backends are in test_tiny_model_logits.py."""
from __future__ import annotations

import pytest
import torch

from engine.loader.errors import ModelLoadError
from engine.loader.gemma3_layout import offset_norms
from engine.loader.multimodal_layout import language_weights
from engine.loader.hf_loader import config_from_hf
from tests.engine.tiny_folders import assert_greedy_matches_transformers, save_folder
from tests.loader.helpers import random_norms


def test_a_multimodal_config_gives_its_language_models_settings_with_gemmas_defaults() -> None:
    """google/gemma-3-4b-it's config.json, as published: text_config leaves most keys at their defaults."""
    raw = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "eos_token_id": [1, 106],
           "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                           "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                           "sliding_window": 1024},
           "vision_config": {"hidden_size": 1152}}
    config = config_from_hf(raw, "m")
    assert (config.architecture, config.hidden_size, config.num_layers, config.vocab_size) == ("gemma3", 2560, 34,
                                                                                             262_208)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (8, 4, 256)
    assert config.eos_token_ids == (1, 106) and config.bos_token_id == 2
    assert (config.rope_theta, config.rope_scaling, config.rope_local_theta) == (
        1e6, {"factor": 8.0, "rope_type": "linear"}, 1e4)
    assert config.sliding_window == 1024 and config.max_position_embeddings == 131_072
    # every sixth layer global: 5, 11, ..., 29
    assert [i for i in range(34) if i not in config.sliding_layers] == [5, 11, 17, 23, 29]
    assert config.attention_multiplier == 256 ** -0.5 and config.embedding_multiplier == 2560 ** 0.5
    assert (config.qk_norm, config.hidden_act, config.tie_word_embeddings) == (True, "gelu_tanh", True)


def test_transformers5_rotary_per_layer_type_and_explicit_layer_types() -> None:
    raw = {"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 3, "head_dim": 16,
           "num_attention_heads": 4, "num_key_value_heads": 1, "sliding_window": 8,
           "layer_types": ["full_attention", "sliding_attention", "full_attention"],
           "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}}}
    config = config_from_hf(raw, "m")
    assert (config.rope_theta, config.rope_scaling, config.rope_local_theta) == (5e5, None, 2e4)
    assert config.sliding_layers == (1,) and [config.window_of(i) for i in range(3)] == [0, 8, 0]


@pytest.mark.parametrize("overrides,why", [
    ({"final_logit_softcapping": 30.0}, "soft-capping"),
    ({"use_bidirectional_attention": True}, "bidirectional"),
    ({"hidden_activation": "relu"}, "hidden_activation"),
    ({"layer_types": ["full_attention"]}, "layer_types"),
])
def test_gemma_variants_the_decoder_does_not_run_are_refused(overrides: dict, why: str) -> None:
    raw = {"architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 2} | overrides
    with pytest.raises(ModelLoadError, match=why):
        config_from_hf(raw, "m")


def test_the_multimodal_checkpoints_language_model_is_taken_and_its_norm_gains_offset() -> None:
    weights = {"model.language_model.layers.0.input_layernorm.weight": torch.tensor([0.5, -1.0]),
               "language_model.model.norm.weight": torch.tensor([0.0]),
               "model.language_model.embed_tokens.weight": torch.ones(3, 2),
               "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": torch.ones(2, 2),
               "multi_modal_projector.mm_input_projection_weight": torch.ones(2, 2),
               "model.layers.0.self_attn.q_norm.weight": torch.tensor([2.0], dtype=torch.bfloat16)}
    got = offset_norms(language_weights(weights))
    assert sorted(got) == ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                           "model.layers.0.self_attn.q_norm.weight", "model.norm.weight"]
    assert got["model.layers.0.input_layernorm.weight"].tolist() == [1.5, 0.0]
    assert got["model.norm.weight"].tolist() == [1.0]
    assert got["model.layers.0.self_attn.q_norm.weight"].dtype == torch.float32  # 1 + w added in float32
    assert torch.equal(got["model.embed_tokens.weight"], torch.ones(3, 2))


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory):
    import transformers

    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=7, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=13, query_pre_attn_scalar=24, max_position_embeddings=256,
        initializer_range=0.2, bos_token_id=2, eos_token_id=1)
    # Gemma's norm weights start at 0 (gains of 1): random ones test them
    model = random_norms(transformers.Gemma3ForCausalLM(config), 0.0, 0.3)
    return save_folder(model, tmp_path_factory.mktemp("gemma3")), model


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_the_engine_decodes_gemma3_past_its_window_as_transformers_does(tiny_gemma3, backend: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts longer than the 13-token window, in chunks (the local layers' keys outside it must be skipped,
    at prefill and at every decode step): transformers' greedy tokens."""
    monkeypatch.setenv("LLMAAS_ATTENTION_BACKEND", backend)
    assert_greedy_matches_transformers(*tiny_gemma3, max_tokens=16)
