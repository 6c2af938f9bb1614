"""The Llama decoder (SmolLM2, Llama 2/3.x, Mistral) and its variants: Qwen2 adds biases to the q, k
and v projections, Qwen3 an RMSNorm over each head of q and k before rotary (ModelConfig's qkv_bias and
qk_norm), Granite four scales (embeddings, residual branches, attention scores, logits). Plain
PyTorch, Hugging Face weight names.

Q/K/V and gate/up projections are fused into one matmul each at load time; attention goes through
the paged-attention op. Tensor shapes: num_tokens (T) rows, flattened over the batch.

A bf16 model on CPU whose linears are packed for the C++ kernel runs its whole stack in one call
(engine/kernels/decoder_stack.py: same kernels, no per-op dispatch); LLMAAS_FUSED_DECODER=0 turns
that off, and so does LLMAAS_ATTENTION_BACKEND=torch. Everything else takes the per-op path below.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from engine.config import ModelConfig
from engine.forward_context import get_attention_metadata
from engine.kernels import decoder_stack, ops
from engine.loader.gguf_loader import Q4_1_SUFFIX
from engine.memory import release_free_heap
from engine.models.layers import Linear, PagedAttention, RMSNorm, RotaryEmbedding
from engine.models.moe import SparseMoeBlock

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (T, 1, head_dim)
FUSED_ENV = "LLMAAS_FUSED_DECODER"


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size)
        self.qkv_bias = (nn.Parameter(torch.zeros(self.q_size + 2 * self.kv_size), requires_grad=False)
                         if config.qkv_bias else None)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.o_proj = Linear(self.q_size, config.hidden_size)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, config.attention_multiplier,
                                   config.window_of(layer))

    def forward(self, rope: Rope, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(x, bias=self.qkv_bias)  # (T, q_size + 2 * kv_size), the bias added before rounding
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q = _head_norm(self.q_norm, q)
            k = _head_norm(self.k_norm, k)
        q, k = ops.rotary(q, k, *rope)
        out = self.attn(q, k, v)  # (T, num_heads, head_dim)
        return self.o_proj(out.reshape(-1, self.q_size))


def _head_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """x: (T, heads, head_dim) -> each head's vector RMS-normalised, same shape (contiguous)."""
    t, heads, head_dim = x.shape
    return norm(x.reshape(t * heads, head_dim))[0].view(t, heads, head_dim)


class LlamaMLP(nn.Module):
    """down(act(gate(x)) * up(x)), act SiLU or (Gemma) GELU-tanh: config.hidden_act."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)
        self.act_and_mul = ops.gelu_tanh_and_mul if config.hidden_act == "gelu_tanh" else ops.silu_and_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp: LlamaMLP | SparseMoeBlock = SparseMoeBlock(config) if config.is_moe_layer(index) else LlamaMLP(config)
        self.residual_multiplier = config.residual_multiplier

    def forward(self, rope: Rope, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the previous layer's MLP output (or the embeddings), joined to the residual here."""
        h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(rope, h)
        if self.residual_multiplier != 1.0:
            h = h * self.residual_multiplier
        h, residual = self.post_attention_layernorm(h, residual)
        h = self.mlp(h)
        if self.residual_multiplier != 1.0:
            h = h * self.residual_multiplier
        return h, residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, lm_head: bool = True) -> None:
        """lm_head False: an embedding model, whose outputs are the hidden states; it holds no
        output projection and drops a checkpoint's."""
        super().__init__()
        self.config = config
        # An uninitialised weight: load_weights places the real one. (Embedding's own init would
        # run torch's reference normal_, which imports torch._dynamo and with it Triton: ~80 MB.)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.rotary = RotaryEmbedding(config)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size) if lm_head else None
        self.requires_grad_(False)
        # The fused stack (or None where it does not apply), decided for the caches in _stack_key.
        self._stack: decoder_stack.DecoderStack | None = None
        self._stack_key: list[torch.Tensor] | None = None
        self._attn: list[PagedAttention] | None = None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: (T,) -> hidden states (T, hidden_size)."""
        stack = self._fused_stack()
        if stack is not None:
            return stack.forward(input_ids, positions, get_attention_metadata())
        x = self._embed(input_ids)
        rope = self.rotary.lookup(positions, x.dtype)
        residual = None
        for layer in self.layers:
            x, residual = layer(rope, x, residual)
        x, _ = self.norm(x, residual)
        return x

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.embed_tokens.weight is None:  # tied: the packed output projection is the only copy
            assert self.lm_head is not None, "the embeddings are dropped only for a packed lm_head"
            x = ops.linear_kernel.gather_rows(self.lm_head.packed, input_ids)
        else:
            x = self.embed_tokens(input_ids)
        multiplier = self.config.embedding_multiplier
        return x if multiplier == 1.0 else x * multiplier

    def _fused_stack(self) -> decoder_stack.DecoderStack | None:
        """The C++ stack where it runs this model as it is now (weights packed, caches bound), else None.
        Decided once per set of bound caches (the runner binds them after load), then looked up."""
        if os.environ.get(FUSED_ENV) == "0" or os.environ.get(ops.BACKEND_ENV) == "torch":
            return None
        if self._attn is None:
            self._attn = self.attention_layers()
        key = self._stack_key
        if key is not None and all(a is b for a, b in zip(key, _caches(self._attn))):
            return self._stack
        self._stack_key, self._stack = _caches(self._attn), self._build_stack()
        return self._stack

    def _build_stack(self) -> decoder_stack.DecoderStack | None:
        windows = {self.config.window_of(i) for i in range(self.config.num_layers)}
        if len(windows) > 1:  # the C++ stack runs one window for all layers
            return None
        k0 = self._attn[0].k_cache if self._attn else torch.empty(0)
        embed = self.embed_tokens.weight
        if embed is None and self.lm_head is not None:
            embed = self.lm_head.packed
        if (not decoder_stack.supported() or k0.dim() != 4 or k0.dtype != torch.bfloat16 or not k0.is_cpu
                or embed is None or (isinstance(embed, torch.Tensor) and embed.dtype != torch.bfloat16)):
            return None
        layers = [_stack_layer(layer) for layer in self.layers]
        if any(layer is None for layer in layers):
            return None
        c = self.config
        shape = decoder_stack.StackShape(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                                         c.intermediate_size, c.rms_norm_eps, c.attention_multiplier,
                                         c.embedding_multiplier, c.residual_multiplier, windows.pop(),
                                         c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size,
                                         c.norm_topk_prob)
        return decoder_stack.DecoderStack(shape, embed, self.norm.weight, self.rotary.cos,
                                          self.rotary.sin, layers)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (S, hidden_size) at the positions to sample -> (S, vocab_size) float32 logits."""
        assert self.lm_head is not None, "an embedding model samples nothing"
        logits = self.lm_head(hidden, out_dtype=torch.float32)
        scaling = self.config.logits_scaling
        return logits if scaling == 1.0 else logits / scaling

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.layers]

    def load_weights(self, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device) -> None:
        """Takes Hugging Face-named tensors out of `weights` (so each is freed once placed), fusing
        q/k/v and gate/up. The model may have been built on the meta device: every parameter and
        buffer is (re)placed here."""

        def take(name: str) -> torch.Tensor:
            if name not in weights:
                raise KeyError(f"missing weight {name}")
            return weights.pop(name)

        def take_q4_1(module: Linear, names: list[str]) -> None:
            """The GGUF's Q4_1 blocks of the weights fused into `module`, where all are there."""
            parts = [weights.pop(n + Q4_1_SUFFIX, None) for n in names]
            if all(b is not None for b in parts):
                module.q4_1_blocks = torch.cat(parts) if len(parts) > 1 else parts[0]

        rope_freqs = weights.pop("rope_freqs", None)
        self.rotary.build(device, rope_freqs)
        set_weight(self.embed_tokens, take("model.embed_tokens.weight"), dtype, device)
        set_weight(self.norm, take("model.norm.weight"), dtype, device)
        if self.lm_head is None:
            weights.pop("lm_head.weight", None)
            weights.pop("lm_head.weight" + Q4_1_SUFFIX, None)
        elif self.config.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
            self.lm_head.weight = self.embed_tokens.weight
        else:
            set_weight(self.lm_head, take("lm_head.weight"), dtype, device)
            take_q4_1(self.lm_head, ["lm_head.weight"])
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            attn = layer.self_attn
            qkv = [p + f"self_attn.{n}_proj.weight" for n in "qkv"]
            set_weight(attn.qkv_proj, torch.cat([take(n) for n in qkv]), dtype, device)
            take_q4_1(attn.qkv_proj, qkv)
            if attn.qkv_bias is not None:
                bias = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
                attn.qkv_bias = nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
            if attn.q_norm is not None and attn.k_norm is not None:
                set_weight(attn.q_norm, take(p + "self_attn.q_norm.weight"), dtype, device)
                set_weight(attn.k_norm, take(p + "self_attn.k_norm.weight"), dtype, device)
            set_weight(attn.o_proj, take(p + "self_attn.o_proj.weight"), dtype, device)
            take_q4_1(attn.o_proj, [p + "self_attn.o_proj.weight"])
            if isinstance(layer.mlp, SparseMoeBlock):
                layer.mlp.load(take, p + "mlp.", dtype, device)
            else:
                gate_up = [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
                set_weight(layer.mlp.gate_up_proj, torch.cat([take(n) for n in gate_up]), dtype, device)
                take_q4_1(layer.mlp.gate_up_proj, gate_up)
                set_weight(layer.mlp.down_proj, take(p + "mlp.down_proj.weight"), dtype, device)
                take_q4_1(layer.mlp.down_proj, [p + "mlp.down_proj.weight"])
            set_weight(layer.input_layernorm, take(p + "input_layernorm.weight"), dtype, device)
            set_weight(layer.post_attention_layernorm, take(p + "post_attention_layernorm.weight"), dtype, device)
        unused = [n for n in weights if not n.endswith("rotary_emb.inv_freq")]
        if unused:
            raise KeyError(f"unexpected weights: {', '.join(sorted(unused)[:5])}")
        linears = [m for m in self.modules() if isinstance(m, Linear)]
        for i, module in enumerate(linears):
            if i % 8 == 0:
                # The packed copies take fresh pages (2 MB ones, engine/kernels/weight_arena.py) while
                # glibc keeps what the unpacked ones freed: handing it back as we go keeps the peak
                # near one copy of the weights.
                release_free_heap()
            module.pack()
        for layer in self.layers:
            if isinstance(layer.mlp, SparseMoeBlock):
                release_free_heap()
                layer.mlp.pack()
        if self.config.tie_word_embeddings and self.lm_head is not None and self.lm_head.packed is not None:
            # The packed output projection holds the embeddings too (gather_rows reads a row out of
            # it): the plain copy goes, 2 bytes a parameter of the vocabulary's matrix.
            self.embed_tokens.weight = None
        self._stack, self._stack_key = None, None  # it points at the previous weights


def _stack_layer(layer: LlamaDecoderLayer) -> decoder_stack.LayerWeights | None:
    """The layer's weights as the C++ stack takes them, or None where one is not packed for it."""
    attn, mlp = layer.self_attn, layer.mlp
    if isinstance(mlp, SparseMoeBlock):
        experts = mlp.packed_gate_up + mlp.packed_down
        if mlp.gate.packed is None or any(p is None for p in experts):
            return None
        mlp_weights: dict = dict(gate_up=None, down=None, router=mlp.gate.packed, expert_gate_up=mlp.packed_gate_up,
                                 expert_down=mlp.packed_down)
    else:
        mlp_weights = dict(gate_up=mlp.gate_up_proj.packed, down=mlp.down_proj.packed)
        if mlp_weights["gate_up"] is None or mlp_weights["down"] is None:
            return None
    if attn.qkv_proj.packed is None or attn.o_proj.packed is None:
        return None
    q_norm, k_norm = _norm_weights(attn)
    return decoder_stack.LayerWeights(
        input_norm=layer.input_layernorm.weight, qkv=attn.qkv_proj.packed, o_proj=attn.o_proj.packed,
        post_norm=layer.post_attention_layernorm.weight, k_cache=attn.attn.k_cache, v_cache=attn.attn.v_cache,
        qkv_bias=attn.qkv_bias, q_norm=q_norm, k_norm=k_norm, **mlp_weights)


def _norm_weights(attn: LlamaAttention) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Qwen3's per-head q and k norm gains, or (None, None)."""
    if attn.q_norm is None or attn.k_norm is None:
        return None, None
    return attn.q_norm.weight, attn.k_norm.weight


def _caches(attn: list[PagedAttention]) -> list[torch.Tensor]:
    return [t for a in attn for t in (a.k_cache, a.v_cache)]


def set_weight(module: nn.Module, tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> None:
    expected = tuple(module.weight.shape)
    if tuple(tensor.shape) != expected:
        raise ValueError(f"weight of shape {tuple(tensor.shape)} where {expected} is expected")
    module.weight = nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False)
