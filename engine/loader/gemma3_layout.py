"""Gemma 3's checkpoints brought to what the loaders and engine/models/gemma3.py expect.

config.json: the multimodal sizes (Gemma3ForConditionalGeneration, 4B and up) keep the language model's
settings in text_config, and both forms leave out whatever equals Gemma3TextConfig's defaults; transformers
5 writes the rotary settings per layer type (rope_parameters.full_attention / .sliding_attention), older
files rope_theta, rope_scaling and rope_local_base_freq. Weights: the multimodal checkpoints name the
language model as loader/multimodal_layout.py reads it, beside a vision tower this engine does not run;
every norm gain is stored as w where Gemma computes with 1 + w.
"""
from __future__ import annotations

import math

import torch

from engine.loader.errors import ModelLoadError

# Gemma3TextConfig's defaults, for the keys a config.json may leave out.
_TEXT_DEFAULTS = {"vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                  "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                  "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
                  "sliding_window": 4096, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
                  "bos_token_id": 2, "eos_token_id": 1, "tie_word_embeddings": True,
                  "hidden_activation": "gelu_pytorch_tanh"}
_SLIDING_PATTERN = 6  # five local layers, then a global one, unless layer_types says otherwise


def text_config(raw: dict) -> dict:
    """The language model's config.json keys, defaults filled in, rotary settings in the older flat form."""
    text = dict(raw.get("text_config") or raw)
    text["architectures"] = raw.get("architectures") or []
    for key in ("bos_token_id", "eos_token_id"):
        if text.get(key) is None and raw.get(key) is not None:
            text[key] = raw[key]
    for key, value in _TEXT_DEFAULTS.items():
        if text.get(key) is None:
            text[key] = value
    rope = text.pop("rope_parameters", None) or {}
    if "full_attention" in rope:  # transformers 5: per layer type
        full, local = dict(rope["full_attention"] or {}), rope.get("sliding_attention") or {}
        text["rope_theta"] = full.pop("rope_theta", text["rope_theta"])
        text["rope_local_base_freq"] = local.get("rope_theta", text["rope_local_base_freq"])
        if local.get("rope_type", "default") != "default":
            raise ModelLoadError("rope scaling on Gemma 3's local layers is unsupported")
        text["rope_scaling"] = full if full.get("rope_type", "default") != "default" else None
    elif rope:
        text["rope_parameters"] = rope
    return text


def fields(text: dict, path: str) -> dict[str, object]:
    """ModelConfig's Gemma 3 fields, from text_config()'s output."""
    if text.get("final_logit_softcapping") or text.get("attn_logit_softcapping"):
        raise ModelLoadError(f"{path}: logit soft-capping (Gemma 2) is unsupported")
    if text.get("use_bidirectional_attention"):
        raise ModelLoadError(f"{path}: bidirectional attention (EmbeddingGemma) is unsupported")
    if text["hidden_activation"] not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ModelLoadError(f"{path}: hidden_activation {text['hidden_activation']!r} is unsupported")
    layers = int(text["num_hidden_layers"])
    layer_types = text.get("layer_types") or [
        "sliding_attention" if (i + 1) % int(text.get("sliding_window_pattern") or _SLIDING_PATTERN)
        else "full_attention" for i in range(layers)]
    if len(layer_types) != layers or set(layer_types) - {"sliding_attention", "full_attention"}:
        raise ModelLoadError(f"{path}: layer_types {layer_types!r} do not name one attention kind per layer")
    return {"hidden_act": "gelu_tanh",
            "embedding_multiplier": math.sqrt(int(text["hidden_size"])),
            "attention_multiplier": float(text["query_pre_attn_scalar"]) ** -0.5,
            "sliding_window": int(text["sliding_window"]),
            "sliding_layers": tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention"),
            "rope_local_theta": float(text["rope_local_base_freq"])}


def offset_norms(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors (under Gemma3ForCausalLM's names: see multimodal_layout.language_weights) with each norm
    gain as Gemma computes it, 1 + w, in float32."""
    return {name: tensor.float() + 1.0 if name.endswith(("norm.weight", "layernorm.weight")) else tensor
            for name, tensor in weights.items()}
