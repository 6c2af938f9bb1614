"""Mixture-of-experts feed-forward: top-k routing and the experts' SwiGLU MLPs over the tokens routed
to each (Mixtral, Qwen3-MoE, Granite MoE).

Each token's output is sum_j weight_j * down_e(silu(gate_e(x)) * up_e(x)) over its top_k experts e_j.
On CPU the experts run one after another, each over the rows routed to it, through the packed linear
kernel: a decode step reads only the experts its tokens chose. Partial sums are added in float32.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.kernels import linear as linear_kernel
from engine.kernels import ops


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits (T, E) -> (weights (T, top_k) float32, expert ids (T, top_k) int64): the softmax
    over all experts, its top_k, rescaled to sum to 1 when `renormalize` (Mixtral, Granite; Qwen3-MoE's
    norm_topk_prob). Granite's softmax over the top_k logits is the same numbers."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


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
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start:start + count]
        rows = token_of[start:start + count]
        start += count
        h = ops.linear(x[rows], gate_up[expert], packed_gate_up[expert])
        y = ops.linear(ops.silu_and_mul(h), down[expert], packed_down[expert], out_dtype=torch.float32)
        out.index_add_(0, rows, y * weights.reshape(-1)[pairs].unsqueeze(1))
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
