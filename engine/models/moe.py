"""The sparse mixture-of-experts block that takes the MLP's place in MoE decoders (Mixtral, Qwen3-MoE,
Granite MoE): a router picks each token's top_k experts, each a SwiGLU MLP of moe_intermediate_size.

Expert weights are held stacked, w_gate_up (E, 2I, H) (gate rows first) and w_down (E, H, I), under
Hugging Face's per-expert names at load (model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight,
the router as mlp.gate.weight). pack() hands each expert to the C++ bf16 kernel where it runs (CPU); on
CUDA the stacked tensors stay and feed the fused Triton kernel, which a decode graph can capture.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from engine.config import ModelConfig
from engine.kernels import linear as linear_kernel
from engine.kernels import moe, ops
from engine.models.layers import Linear


class SparseMoeBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts, self.top_k, self.renormalize = e, config.num_experts_per_tok, config.norm_topk_prob
        self.gate = Linear(h, e)  # the router
        self.w_gate_up: torch.Tensor | None = nn.Parameter(torch.empty(e, 2 * i, h), requires_grad=False)
        self.w_down: torch.Tensor | None = nn.Parameter(torch.empty(e, h, i), requires_grad=False)
        self.packed_gate_up: list[linear_kernel.PackedLinearWeight | None] = [None] * e
        self.packed_down: list[linear_kernel.PackedLinearWeight | None] = [None] * e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (T, H) -> (T, H)."""
        weights, ids = moe.route(self.gate(x, out_dtype=torch.float32), self.top_k, self.renormalize)
        if moe.fused_runs(x.device):
            assert self.w_gate_up is not None and self.w_down is not None  # pack() keeps them off CPU
            return moe.fused_experts_forward(x, weights, ids, self.w_gate_up, self.w_down)
        gate_up = [None] * self.num_experts if self.w_gate_up is None else self.w_gate_up.unbind(0)
        down = [None] * self.num_experts if self.w_down is None else self.w_down.unbind(0)
        return moe.experts_forward(x, weights, ids, gate_up, down, self.packed_gate_up, self.packed_down)

    def load(self, take: Callable[[str], torch.Tensor], prefix: str, dtype: torch.dtype,
             device: torch.device) -> None:
        """Places the router and the experts from Hugging Face-named tensors; take(name) pops one."""
        router = take(prefix + "gate.weight")
        if tuple(router.shape) != tuple(self.gate.weight.shape):
            raise ValueError(f"router weight of shape {tuple(router.shape)} where "
                             f"{tuple(self.gate.weight.shape)} is expected")
        self.gate.weight = nn.Parameter(router.to(device=device, dtype=dtype), requires_grad=False)
        p = prefix + "experts.{}."
        gate_up = [torch.cat([take(p.format(e) + "gate_proj.weight"), take(p.format(e) + "up_proj.weight")])
                   for e in range(self.num_experts)]
        down = [take(p.format(e) + "down_proj.weight") for e in range(self.num_experts)]
        self.w_gate_up = _stacked(gate_up, self.w_gate_up, dtype, device)
        self.w_down = _stacked(down, self.w_down, dtype, device)

    def pack(self) -> None:
        """Each expert's two projections in the C++ kernel's layout, where it runs (then the stacked
        copies go); otherwise nothing changes."""
        assert self.w_gate_up is not None and self.w_down is not None
        gate_up = [ops.pack_linear_weight(w) for w in self.w_gate_up.unbind(0)]
        down = [ops.pack_linear_weight(w) for w in self.w_down.unbind(0)]
        if all(p is not None for p in gate_up + down):
            self.packed_gate_up, self.packed_down = gate_up, down
            self.w_gate_up = self.w_down = None


def _stacked(parts: list[torch.Tensor], current: torch.Tensor | None, dtype: torch.dtype,
             device: torch.device) -> nn.Parameter:
    stacked = torch.stack(parts).to(device=device, dtype=dtype)
    assert current is not None
    if stacked.shape != current.shape:
        raise ValueError(f"expert weights of shape {tuple(stacked.shape)} where {tuple(current.shape)} is expected")
    return nn.Parameter(stacked, requires_grad=False)
