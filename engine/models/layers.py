"""Building blocks shared by the decoder families: RMSNorm, rotary embedding, paged attention."""
from __future__ import annotations

import math

import torch
from torch import nn

from engine.config import ModelConfig
from engine.forward_context import get_attention_metadata
from engine.kernels import ops


class Linear(nn.Module):
    """y = x W^T through the kernel dispatch. After load, pack() hands the weight to the C++ bf16
    kernel's layout where that kernel runs (then only the packed copy is kept)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.packed: ops.linear_kernel.PackedLinearWeight | None = None
        # The weight's GGUF Q4_1 blocks (uint8 (out_features, in_features / 32 * 20)) until pack().
        self.q4_1_blocks: torch.Tensor | None = None

    def pack(self) -> None:
        assert self.weight is not None
        self.packed = ops.pack_linear_weight(self.weight, self.q4_1_blocks)
        self.q4_1_blocks = None
        if self.packed is not None:
            self.weight = None

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        return ops.linear(x, self.weight, self.packed, out_dtype, bias)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds residual to x first when given; returns (normed, new residual)."""
        return ops.add_rms_norm(x, residual, self.weight, self.eps)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """(head_dim // 2,) inverse frequencies, with Llama 3 or linear scaling when configured."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(f"unsupported rope scaling type {kind!r}")


class RotaryEmbedding(nn.Module):
    """Rotate-half rotary embedding with a cos/sin table (float32) for every position."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.cos = torch.empty(0)  # (max_positions, head_dim), filled by build()
        self.sin = torch.empty(0)

    def build(self, device: torch.device, rope_freqs: torch.Tensor | None = None) -> None:
        """rope_freqs: Llama 3.1 GGUFs carry their rope scaling as per-frequency divisors."""
        inv_freq = rope_inv_freq(self.config)
        if rope_freqs is not None:
            inv_freq = inv_freq / rope_freqs.float().cpu()
        positions = torch.arange(self.config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(device), emb.sin().to(device)

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (num_tokens, 1, head_dim): looked up once per forward pass, shared by all layers."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


class PagedAttention(nn.Module):
    """Writes this step's K/V into the layer's paged cache, then attends over the cache."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float | None = None,
                 sliding_window: int = 0) -> None:
        """scale: of the attention scores, head_dim ** -0.5 unless the model sets its own (Granite).
        sliding_window: attend to that many last positions only (a local layer of Gemma 3); 0: all."""
        super().__init__()
        self.sliding_window = sliding_window
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5 if scale is None else scale
        self.k_cache = torch.empty(0)  # (num_blocks, block_size, num_kv_heads, head_dim), bound by the runner
        self.v_cache = torch.empty(0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        meta = get_attention_metadata()
        ops.write_kv_cache(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        return ops.paged_attention(q, self.k_cache, self.v_cache, meta.block_tables, meta.context_lens,
                                   meta.query_start_loc, self.scale, meta.max_query_len, meta.max_context_len,
                                   sliding_window=self.sliding_window)
