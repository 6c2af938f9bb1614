"""Mixture-of-experts feed-forward: top-k routing and the experts' SwiGLU MLPs over the tokens routed
to each (Mixtral, Qwen3-MoE, Granite MoE).

Each token's output is sum_j weight_j * down_e(silu(gate_e(x)) * up_e(x)) over its top_k experts e_j.
On CPU, with every expert packed for the C++ kernel, the rows are sorted by expert and each projection of
all chosen experts is one grouped call (engine/kernels/linear.py grouped_linear): a decode step reads only
the experts its tokens chose, with one thread team a projection. Otherwise the experts run one after
another, each over the rows routed to it. Partial sums are added in float32. Both count each expert's rows
on the host (.tolist()), which a CUDA graph cannot hold: on CUDA with Triton the stacked experts run
instead through the fused kernel (engine/kernels/triton/fused_moe.py), whose shapes and grids follow
from T, top_k and E alone.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import torch

from engine.kernels import linear as linear_kernel
from engine.kernels import gpu_ops, ops


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits (T, E) -> (weights (T, top_k) float32, expert ids (T, top_k) int64): the softmax
    over all experts, its top_k, rescaled to sum to 1 when `renormalize` (Mixtral, Granite; Qwen3-MoE's
    norm_topk_prob). Granite's softmax over the top_k logits is the same numbers."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def fused_runs(device: torch.device) -> bool:
    """Whether experts on `device` run fused_experts_forward: CUDA with Triton, unless
    LLMAAS_ATTENTION_BACKEND=torch asks for the torch reference everywhere."""
    return (device.type == "cuda" and gpu_ops.triton_available()
            and os.environ.get(ops.BACKEND_ENV) != "torch")


def fused_experts_forward(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w_gate_up: torch.Tensor,
                          w_down: torch.Tensor) -> torch.Tensor:
    """experts_forward's sum from the stacked experts, w_gate_up (E, 2I, H) and w_down (E, H, I), in the
    Triton fused kernel: no host sync, so capturable in a CUDA graph. Where fused_runs()."""
    from engine.kernels.triton.fused_moe import fused_moe

    return fused_moe(x, w_gate_up, w_down, weights, ids)


def experts_forward(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                    gate_up: Sequence[torch.Tensor | None], down: Sequence[torch.Tensor | None],
                    packed_gate_up: Sequence[linear_kernel.PackedLinearWeight | None],
                    packed_down: Sequence[linear_kernel.PackedLinearWeight | None]) -> torch.Tensor:
    """x (T, H); weights, ids (T, top_k) from route(); expert e's fused gate/up (2I, H) and down (H, I)
    projections, as plain tensors or packed for the C++ kernel -> (T, H) in x's dtype."""
    num_tokens, top_k = ids.shape
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)  # the (token, slot) pairs grouped by expert
    counts = torch.bincount(flat, minlength=len(down)).tolist()
    token_of = order // top_k
    out = torch.zeros(num_tokens, x.shape[1], dtype=torch.float32, device=x.device)
    pair_weights = weights.reshape(-1)[order].unsqueeze(1)
    if all(p is not None for p in packed_gate_up) and all(p is not None for p in packed_down):
        # Every chosen expert in two C++ calls (gate/up, then down) over the rows sorted by expert.
        active = [e for e, count in enumerate(counts) if count]
        row_starts = [0, *itertools.accumulate(counts[e] for e in active)]
        h = linear_kernel.grouped_linear(x[token_of], [packed_gate_up[e] for e in active], row_starts)
        y = linear_kernel.grouped_linear(ops.silu_and_mul(h), [packed_down[e] for e in active], row_starts,
                                         out_dtype=torch.float32)
        return out.index_add_(0, token_of, y * pair_weights).to(x.dtype)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        rows = token_of[start:start + count]
        h = ops.linear(x[rows], gate_up[expert], packed_gate_up[expert])
        y = ops.linear(ops.silu_and_mul(h), down[expert], packed_down[expert], out_dtype=torch.float32)
        out.index_add_(0, rows, y * pair_weights[start:start + count])
        start += count
    return out.to(x.dtype)


def reference(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w_gate_up: torch.Tensor,
              w_down: torch.Tensor) -> torch.Tensor:
    """The same sum, token by token in float32, from stacked expert weights: w_gate_up (E, 2I, H),
    w_down (E, H, I). The oracle of the kernels' tests."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    for t in range(x.shape[0]):
        for weight, e in zip(weights[t].tolist(), ids[t].tolist()):
            gate, up = (w_gate_up[e].float() @ x[t].float()).chunk(2)
            out[t] += weight * (w_down[e].float() @ (torch.nn.functional.silu(gate) * up))
    return out
