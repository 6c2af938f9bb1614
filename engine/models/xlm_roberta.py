"""An XLM-RoBERTa encoder (XLMRobertaModel: IBM's granite-embedding models, multilingual-e5), as an
embedding model only: every token attends to every token of its own prompt, both ways.

BERT's layout: absolute position embeddings (positions counted from padding_idx + 1, as fairseq did),
token type 0, LayerNorm after each sublayer's residual add, biases everywhere, an exact-erf GELU. No KV
cache: a prompt is computed whole in one step (the scheduler does not split an encoder's prompts), its
tokens contiguous rows of the batch (AttentionMetadata.query_start_loc). Tensor shapes: num_tokens (T) rows.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from engine.config import ModelConfig
from engine.forward_context import get_attention_metadata
from engine.models.layers import Linear, PagedAttention


class BiasedLinear(nn.Module):
    """x W^T + b through the kernel dispatch: the products summed in fp32, the bias added in fp32 and the
    sum rounded once to x's dtype (in the packed C++ kernel's store where it runs, else torch's)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = Linear(in_features, out_features)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, bias=self.bias)


def attend_both_ways(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """Each prompt's tokens attend to all of its own: q, k, v (T, heads, D), prompt i rows starts[i] to
    starts[i + 1]. A run of consecutive prompts of one length is one batched call on views (a batch of
    equal prompts, as a client's, is one call, not one a prompt); each (prompt, head) is computed alone
    within it."""
    out = torch.empty_like(q)
    lengths = [b - a for a, b in zip(starts, starts[1:])]
    i = 0
    while i < len(lengths):
        j = i
        while j + 1 < len(lengths) and lengths[j + 1] == lengths[i]:
            j += 1
        n, count, a = lengths[i], j - i + 1, starts[i]
        b = a + count * n

        def heads_first(t: torch.Tensor) -> torch.Tensor:  # (count, heads, n, D)
            return t[a:b].view(count, n, *t.shape[1:]).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v))
        out[a:b] = attended.transpose(1, 2).reshape(b - a, *q.shape[1:])
        i = j + 1
    return out


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.num_heads, self.head_dim, self.eps = config.num_heads, config.head_dim, config.rms_norm_eps
        self.qkv = BiasedLinear(h, 3 * h)
        self.attn_out = BiasedLinear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=self.eps)
        self.up = BiasedLinear(h, i)
        self.down = BiasedLinear(i, h)
        self.out_norm = nn.LayerNorm(h, eps=self.eps)

    def forward(self, x: torch.Tensor, starts: list[int]) -> torch.Tensor:
        q, k, v = self.qkv(x).view(-1, 3, self.num_heads, self.head_dim).unbind(1)  # each (T, heads, D)
        attn = attend_both_ways(q, k, v, starts)
        x = self.attn_norm(x + self.attn_out(attn.reshape(x.shape)))
        return self.out_norm(x + self.down(F.gelu(self.up(x))))


class XLMRobertaModel(nn.Module):
    def __init__(self, config: ModelConfig, lm_head: bool = False) -> None:
        super().__init__()
        if lm_head:
            raise ValueError(f"{config.architecture} is an encoder: it serves embeddings only (--task embed)")
        self.config = config
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h)
        # rows position_offset .. position_offset + max_position_embeddings - 1 are the prompts' positions
        self.position_embeddings = nn.Embedding(config.max_position_embeddings + config.position_offset, h)
        self.token_type_embedding = nn.Parameter(torch.zeros(h), requires_grad=False)
        self.embed_norm = nn.LayerNorm(h, eps=config.rms_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: (T,), each prompt whole -> the last layer's hidden states (T, hidden_size)."""
        meta = get_attention_metadata()
        starts = meta.query_start_loc.tolist()
        assert torch.equal(meta.context_lens.cpu(), (meta.query_start_loc[1:] - meta.query_start_loc[:-1]).cpu()), \
            "an encoder computes each prompt whole, in one step"
        x = self.word_embeddings(input_ids) + self.token_type_embedding
        x = self.embed_norm(x + self.position_embeddings(positions + self.config.position_offset))
        for layer in self.layers:
            x = layer(x, starts)
        return x

    def attention_layers(self) -> list[PagedAttention]:
        return []  # no KV cache: each prompt is attended whole, in its step

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise AssertionError("an encoder samples nothing")

    def load_weights(self, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device) -> None:
        """Takes XLMRobertaModel's tensors (without a "roberta." prefix) out of `weights`."""

        def place(module: nn.Module, prefix: str, names: tuple[str, ...] = ("weight", "bias")) -> None:
            for name in names:
                tensor = weights.pop(f"{prefix}.{name}")
                # A biased linear's weight is its Linear's (packed below), its bias its own.
                owner = module.linear if isinstance(module, BiasedLinear) and name == "weight" else module
                expected = tuple(getattr(owner, name).shape)
                if tuple(tensor.shape) != expected:
                    raise ValueError(f"{prefix}.{name} has shape {tuple(tensor.shape)} where {expected} is expected")
                setattr(owner, name, nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False))

        place(self.word_embeddings, "embeddings.word_embeddings", ("weight",))
        place(self.position_embeddings, "embeddings.position_embeddings", ("weight",))
        self.token_type_embedding = nn.Parameter(weights.pop("embeddings.token_type_embeddings.weight")[0].to(
            device=device, dtype=dtype), requires_grad=False)
        place(self.embed_norm, "embeddings.LayerNorm")
        for i, layer in enumerate(self.layers):
            p = f"encoder.layer.{i}."
            for name in ("weight", "bias"):
                fused = torch.cat([weights.pop(p + f"attention.self.{n}.{name}") for n in ("query", "key", "value")])
                weights[p + f"qkv.{name}"] = fused
            place(layer.qkv, p + "qkv")
            place(layer.attn_out, p + "attention.output.dense")
            place(layer.attn_norm, p + "attention.output.LayerNorm")
            place(layer.up, p + "intermediate.dense")
            place(layer.down, p + "output.dense")
            place(layer.out_norm, p + "output.LayerNorm")
        for name in [n for n in weights if n.startswith("pooler.")]:
            del weights[name]  # BERT's pooler (a tanh layer over the first token): sentence embedders skip it
        if weights:
            raise KeyError(f"unexpected weights: {', '.join(sorted(weights)[:5])}")
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack()
