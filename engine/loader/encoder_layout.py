"""BERT-style encoder checkpoints (XLMRobertaModel, RobertaModel, BertModel): their config.json as a
ModelConfig, their tensor names and shapes, for engine/models/xlm_roberta.py.

RoBERTa numbers positions from padding_idx + 1 (fairseq's convention), so its table has that many rows
before the first position; BERT's starts at 0. Checkpoints saved from a task head carry a "roberta." or
"bert." prefix, which goes; a BERT pooler's weights, and buffers some files keep, are dropped, and so are
the token type embeddings but type 0's.
"""
from __future__ import annotations

import torch

from engine.config import ModelConfig
from engine.loader.errors import ModelLoadError

ENCODER_ARCHITECTURES = {"XLMRobertaModel": "xlm_roberta", "RobertaModel": "xlm_roberta", "BertModel": "bert"}
ENCODER_MODEL_TYPES = {"xlm-roberta": "xlm_roberta", "roberta": "xlm_roberta", "bert": "bert"}
_PREFIXES = ("roberta.", "bert.")
_DROPPED = ("embeddings.position_ids", "embeddings.token_type_ids")
_TOKEN_TYPES = "embeddings.token_type_embeddings.weight"


def encoder_config(raw: dict, arch: str, path: str) -> ModelConfig:
    def get(key: str) -> object:
        if raw.get(key) is None:
            raise ModelLoadError(f"{path}: config.json lacks {key!r}")
        return raw[key]

    if raw.get("hidden_act", "gelu") != "gelu":
        raise ModelLoadError(f"{path}: hidden_act {raw['hidden_act']!r} is unsupported (the encoder's is gelu)")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(f"{path}: position_embedding_type {raw['position_embedding_type']!r} is unsupported")
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise ModelLoadError(f"{path}: a BERT-style decoder is unsupported (encoders only)")
    hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    if hidden % heads:
        raise ModelLoadError(f"{path}: hidden_size {hidden} is no multiple of num_attention_heads {heads}")
    offset = int(raw.get("pad_token_id") or 0) + 1 if arch == "xlm_roberta" else 0
    positions = int(get("max_position_embeddings")) - offset
    if positions < 1:
        raise ModelLoadError(f"{path}: max_position_embeddings leaves no position after the padding offset")
    eos = raw.get("eos_token_id")
    return ModelConfig(
        architecture=arch, vocab_size=int(get("vocab_size")), hidden_size=hidden,
        intermediate_size=int(get("intermediate_size")), num_layers=int(get("num_hidden_layers")), num_heads=heads,
        num_kv_heads=heads, head_dim=hidden // heads, rms_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        rope_theta=0.0, max_position_embeddings=positions, tie_word_embeddings=False,
        bos_token_id=raw.get("bos_token_id"), eos_token_ids=(eos,) if isinstance(eos, int) else (),
        hidden_act="gelu", causal=False, position_offset=offset)


def encoder_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        if name == _TOKEN_TYPES:
            tensor = tensor[:1]  # every token is of type 0: the other rows are never read
        if name not in _DROPPED and not name.startswith("pooler."):
            out[name] = tensor
    return out


def encoder_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, i = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings + config.position_offset, h),
        _TOKEN_TYPES: (1, h), "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for layer in range(config.num_layers):
        p = f"encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes |= {p + name + ".weight": (h, h), p + name + ".bias": (h,)}
        shapes |= {p + "intermediate.dense.weight": (i, h), p + "intermediate.dense.bias": (i,),
                   p + "output.dense.weight": (h, i), p + "output.dense.bias": (h,)}
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes |= {p + name + ".weight": (h,), p + name + ".bias": (h,)}
    return shapes
