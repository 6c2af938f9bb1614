"""The Hugging Face Llama parameter layout every loader produces, and its validation."""
from __future__ import annotations

from collections.abc import Mapping

from engine.config import ModelConfig
from engine.loader.errors import ModelLoadError


def expected_shapes(config: ModelConfig, lm_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Name -> torch shape of every parameter a Llama model with `config` needs (no lm_head when tied,
    nor for an embedding model (lm_head False); Qwen2's q/k/v biases and Qwen3's q/k norms where the
    config has them)."""
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
            p + "mlp.gate_proj.weight": (config.intermediate_size, h),
            p + "mlp.up_proj.weight": (config.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, config.intermediate_size),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
        if config.qkv_bias:
            shapes |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.bias": (kv,)}
        if config.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (config.head_dim,),
                       p + "self_attn.k_norm.weight": (config.head_dim,)}
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
