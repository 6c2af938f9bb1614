"""Mixture-of-experts checkpoints under one set of names: Qwen3-MoE's, one tensor per expert and
projection (model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight) and the router as
model.layers.N.mlp.gate.weight, which the decoder stacks again itself (engine/models/moe.py).

Mixtral names its experts' projections w1 (gate), w3 (up), w2 (down) under block_sparse_moe; Granite MoE
stores all experts of a layer stacked, gate and up fused (input_linear (E, 2I, H), gate rows first) and
down (output_linear (E, H, I)); llama.cpp stacks each projection over the experts (ffn_gate_exps, ...:
the GGUF loader names them mlp.experts.{gate,up,down}_proj.weight); transformers 5 can write
mlp.experts.gate_up_proj (E, 2I, H) and mlp.experts.down_proj (E, H, I).
"""
from __future__ import annotations

import re

import torch

_RENAMED = [
    (re.compile(r"(model\.layers\.\d+\.)block_sparse_moe\.gate\.weight"), r"\1mlp.gate.weight"),
    (re.compile(r"(model\.layers\.\d+\.)block_sparse_moe\.router\.layer\.weight"), r"\1mlp.gate.weight"),
    (re.compile(r"(model\.layers\.\d+\.)block_sparse_moe\.experts\.(\d+)\.w1\.weight"),
     r"\1mlp.experts.\2.gate_proj.weight"),
    (re.compile(r"(model\.layers\.\d+\.)block_sparse_moe\.experts\.(\d+)\.w3\.weight"),
     r"\1mlp.experts.\2.up_proj.weight"),
    (re.compile(r"(model\.layers\.\d+\.)block_sparse_moe\.experts\.(\d+)\.w2\.weight"),
     r"\1mlp.experts.\2.down_proj.weight"),
]
# A stacked tensor (E, rows, cols) -> the projections each expert's slice holds, split along its rows.
_STACKED = [
    (re.compile(r"(model\.layers\.\d+\.)block_sparse_moe\.input_linear\.weight"), ("gate_proj", "up_proj")),
    (re.compile(r"(model\.layers\.\d+\.)block_sparse_moe\.output_linear\.weight"), ("down_proj",)),
    (re.compile(r"(model\.layers\.\d+\.)mlp\.experts\.gate_up_proj"), ("gate_proj", "up_proj")),
    (re.compile(r"(model\.layers\.\d+\.)mlp\.experts\.down_proj"), ("down_proj",)),
    (re.compile(r"(model\.layers\.\d+\.)mlp\.experts\.(gate_proj|up_proj|down_proj)\.weight"), None),
]


def unstack_experts(weights: dict[str, torch.Tensor]) -> None:
    """In place: every known MoE name becomes the per-expert one. Tensors of other names, or stacked
    ones of a shape that does not split so, are left for the shape check to name."""
    for name in list(weights):
        renamed = _renamed(name)
        if renamed is not None:
            weights[renamed] = weights.pop(name)
            continue
        for pattern, parts in _STACKED:
            match = pattern.fullmatch(name)
            tensor = weights[name]
            if match is None or tensor.dim() != 3:
                continue
            projections = (match.group(2),) if parts is None else parts
            if tensor.shape[1] % len(projections):
                continue
            del weights[name]
            for e, expert in enumerate(tensor.unbind(0)):
                for projection, piece in zip(projections, expert.chunk(len(projections))):
                    weights[f"{match.group(1)}mlp.experts.{e}.{projection}.weight"] = piece
            break


def _renamed(name: str) -> str | None:
    for pattern, replacement in _RENAMED:
        if pattern.fullmatch(name):
            return pattern.sub(replacement, name)
    return None
