"""Checkpoints that store Llama's projections fused (Phi-3 and Phi-4: one qkv_proj, one gate_up_proj per
layer), split back into Llama's names, which every loader produces and the decoder fuses again itself."""
from __future__ import annotations

import torch

from engine.config import ModelConfig


def split_fused_projections(weights: dict[str, torch.Tensor], config: ModelConfig, suffix: str = "") -> None:
    """In place: each layer's qkv_proj.weight (q rows, then k, then v) becomes q/k/v_proj.weight, and
    its gate_up_proj.weight (gate rows, then up) gate_proj.weight and up_proj.weight. Tensors of any
    other name, or of a shape that does not split so, are left for the shape check to name. `suffix`
    follows every name: the GGUF loader's Q4_1 blocks of a weight, one row of blocks per weight row,
    split as the weight's rows do."""
    q, kv, inter = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim, config.intermediate_size
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        _split(weights, p + "self_attn.qkv_proj.weight" + suffix,
               [(p + "self_attn.q_proj.weight" + suffix, q), (p + "self_attn.k_proj.weight" + suffix, kv),
                (p + "self_attn.v_proj.weight" + suffix, kv)])
        _split(weights, p + "mlp.gate_up_proj.weight" + suffix,
               [(p + "mlp.gate_proj.weight" + suffix, inter), (p + "mlp.up_proj.weight" + suffix, inter)])


def _split(weights: dict[str, torch.Tensor], fused: str, parts: list[tuple[str, int]]) -> None:
    tensor = weights.get(fused)
    if tensor is None or tensor.dim() != 2 or tensor.shape[0] != sum(rows for _, rows in parts):
        return
    del weights[fused]
    for (name, _), piece in zip(parts, tensor.split([rows for _, rows in parts])):
        weights[name] = piece
