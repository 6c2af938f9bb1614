"""The Hugging Face Llama parameter layout every loader produces, and its validation."""
from __future__ import annotations

from collections.abc import Mapping

from engine.config import ModelConfig
from engine.loader.encoder_layout import encoder_shapes
from engine.loader.errors import ModelLoadError


def expected_shapes(config: ModelConfig, lm_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Name -> torch shape of every parameter a Llama model with `config` needs (no lm_head when tied,
    nor for an embedding model (lm_head False); Qwen2's q/k/v biases and Qwen3's q/k norms where the
    config has them)."""
    if not config.causal:
        return encoder_shapes(config)
    h, q, kv = config.hidden_size, config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if lm_head and not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
        shapes |= _mlp_shapes(config, i)
        if config.qkv_bias:
            shapes |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.bias": (kv,)}
        if config.architecture == "gemma3":
            shapes |= {p + "pre_feedforward_layernorm.weight": (h,), p + "post_feedforward_layernorm.weight": (h,)}
        if config.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (config.head_dim,),
                       p + "self_attn.k_norm.weight": (config.head_dim,)}
    return shapes


def _mlp_shapes(config: ModelConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """A dense layer's gate/up/down projections, or a MoE layer's router and experts (Qwen3-MoE's names)."""
    p, h = f"model.layers.{layer}.mlp.", config.hidden_size
    if not config.is_moe_layer(layer):
        i = config.intermediate_size
        return {p + "gate_proj.weight": (i, h), p + "up_proj.weight": (i, h), p + "down_proj.weight": (h, i)}
    i = config.moe_intermediate_size
    shapes: dict[str, tuple[int, ...]] = {p + "gate.weight": (config.num_experts, h)}
    for e in range(config.num_experts):
        q = f"{p}experts.{e}."
        shapes |= {q + "gate_proj.weight": (i, h), q + "up_proj.weight": (i, h), q + "down_proj.weight": (h, i)}
    return shapes


def check_shapes(
    shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raise ModelLoadError naming `source` unless `shapes` has exactly the `expected` names and shapes."""
    missing = sorted(expected.keys() - shapes.keys())
    if missing:
        raise ModelLoadError(f"{source}: missing tensors {_preview(missing)}")
    unexpected = sorted(shapes.keys() - expected.keys())
    if unexpected:
        raise ModelLoadError(f"{source}: unexpected tensors {_preview(unexpected)}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ModelLoadError(f"{source}: tensor {name} has shape {tuple(shapes[name])}, expected {shape}")


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} (+{len(names) - limit} more)"
