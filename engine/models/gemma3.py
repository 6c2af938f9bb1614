"""Google's Gemma 3 text decoder (Gemma3ForCausalLM, and the language model of the multimodal sizes).

Against Llama: the embeddings scaled by sqrt(hidden_size); four norms a layer, the attention's and the
MLP's outputs normed before they join the residual; RMSNorm of q and k per head; attention scores scaled
by query_pre_attn_scalar ** -0.5; a GELU (tanh) gate. Five local layers of six attend to the last
sliding_window positions only, rotated at their own base frequency without rope scaling; the global
ones see the whole context. Norm gains are stored as Gemma computes them, 1 + weight (loaders add the 1;
llama.cpp's files have it added already). Tensor shapes: num_tokens (T) rows, flattened over the batch.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from engine.config import ModelConfig
from engine.kernels import ops
from engine.loader.gguf_loader import Q4_1_SUFFIX
from engine.models.layers import Linear, PagedAttention, RMSNorm, RotaryEmbedding
from engine.models.llama import LlamaMLP, Rope, _head_norm, set_weight


class Gemma3Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.o_proj = Linear(self.q_size, config.hidden_size)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, config.attention_multiplier,
                                   config.window_of(layer))

    def forward(self, rope: Rope, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = _head_norm(self.q_norm, q.reshape(-1, self.num_heads, self.head_dim))
        k = _head_norm(self.k_norm, k.reshape(-1, self.num_kv_heads, self.head_dim))
        q, k = ops.rotary(q, k, *rope)
        out = self.attn(q, k, v.reshape(-1, self.num_kv_heads, self.head_dim))
        return self.o_proj(out.reshape(-1, self.q_size))


class Gemma3DecoderLayer(nn.Module):
    NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.local = layer in config.sliding_layers
        self.self_attn = Gemma3Attention(config, layer)
        self.mlp = LlamaMLP(config)  # its gate GELU-tanh (config.hidden_act)
        for name in self.NORMS:
            setattr(self, name, RMSNorm(config.hidden_size, config.rms_norm_eps))

    def forward(self, rope: Rope, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the previous layer's normed MLP output (or the embeddings), joined to the residual here."""
        h, residual = self.input_layernorm(x, residual)
        h, _ = self.post_attention_layernorm(self.self_attn(rope, h))
        h, residual = self.pre_feedforward_layernorm(h, residual)
        h, _ = self.post_feedforward_layernorm(self.mlp(h))
        return h, residual


class Gemma3ForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, lm_head: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.rotary = RotaryEmbedding(config)
        local_theta = config.rope_local_theta if config.rope_local_theta is not None else config.rope_theta
        self.local_rotary = RotaryEmbedding(dataclasses.replace(config, rope_theta=local_theta, rope_scaling=None))
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Tied, as every Gemma 3 is: the output projection reads the embeddings (packed on CPU at load).
        self.lm_head = Linear(config.hidden_size, config.vocab_size) if lm_head else None
        self.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: (T,) -> hidden states (T, hidden_size)."""
        if self.embed_tokens.weight is None:  # the packed output projection holds the only copy
            assert self.lm_head is not None and self.lm_head.packed is not None
            x = ops.linear_kernel.gather_rows(self.lm_head.packed, input_ids)
        else:
            x = self.embed_tokens(input_ids)
        x = x * self.config.embedding_multiplier
        ropes = (self.rotary.lookup(positions, x.dtype), self.local_rotary.lookup(positions, x.dtype))
        residual = None
        for layer in self.layers:
            x, residual = layer(ropes[layer.local], x, residual)
        x, _ = self.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (S, hidden_size) at the positions to sample -> (S, vocab_size) float32 logits."""
        assert self.lm_head is not None, "an embedding model samples nothing"
        return self.lm_head(hidden, out_dtype=torch.float32)

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.layers]

    def load_weights(self, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device) -> None:
        """Takes Hugging Face-named tensors out of `weights` (norm gains with Gemma's 1 added), fusing
        q/k/v and gate/up; every parameter and buffer is (re)placed here."""

        def take(name: str) -> torch.Tensor:
            if name not in weights:
                raise KeyError(f"missing weight {name}")
            return weights.pop(name)

        for name in [n for n in weights if n.endswith(Q4_1_SUFFIX)]:  # decode forms this model does not read
            del weights[name]
        self.rotary.build(device)
        self.local_rotary.build(device)
        set_weight(self.embed_tokens, take("model.embed_tokens.weight"), dtype, device)
        set_weight(self.norm, take("model.norm.weight"), dtype, device)
        weights.pop("lm_head.weight", None)
        if self.lm_head is not None:
            self.lm_head.weight = self.embed_tokens.weight
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            attn = layer.self_attn
            set_weight(attn.qkv_proj, torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"]), dtype, device)
            set_weight(attn.o_proj, take(p + "self_attn.o_proj.weight"), dtype, device)
            set_weight(attn.q_norm, take(p + "self_attn.q_norm.weight"), dtype, device)
            set_weight(attn.k_norm, take(p + "self_attn.k_norm.weight"), dtype, device)
            gate_up = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
            set_weight(layer.mlp.gate_up_proj, gate_up, dtype, device)
            set_weight(layer.mlp.down_proj, take(p + "mlp.down_proj.weight"), dtype, device)
            for name in Gemma3DecoderLayer.NORMS:
                set_weight(getattr(layer, name), take(p + name + ".weight"), dtype, device)
        if weights:
            raise KeyError(f"unexpected weights: {', '.join(sorted(weights)[:5])}")
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack()
        if self.lm_head is not None and self.lm_head.packed is not None:
            self.embed_tokens.weight = None  # 2 bytes a parameter of Gemma's 262k-token vocabulary
