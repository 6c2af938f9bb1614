"""A bf16 Llama decoder stack on CPU in one C++ call (csrc/cpu/decoder_stack.cpp), and the
SiLU-and-multiply of its MLP. The Llama variants run there too: Qwen2's q/k/v biases, Qwen3's
per-head q/k norms, Granite's embedding, residual and attention scales (its logits scale is
applied after, by the model's compute_logits).

The per-op path (engine/models/llama.py) makes ~15 Python-level op calls per layer; for a small
model at decode that dispatch costs about as much as streaming the weights. `DecoderStack` hands
the whole forward pass, embedding to final norm, to one call that runs the same kernels (packed
bf16 linear, fused add-RMSNorm, rotary, KV write, paged attention) on preallocated pointers:

    stack = DecoderStack(shape, embed, final_norm, cos, sin, layers)    # once, after load
    hidden = stack.forward(input_ids, positions, metadata)              # each step

Results equal the per-op path's bit for bit except SiLU, whose exp is a polynomial within 2 ulp
of fp32 where torch uses Sleef's, so a rare activation differs by one bf16 ulp. Everything the
kernel trusts (shapes, dtypes, contiguity, cache layout) is checked once at construction; per
step only the metadata is checked, and the kernel range-checks ids, positions, slots and blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.forward_context import AttentionMetadata
from engine.kernels.linear import PackedLinearWeight

try:
    from engine import _C
except ImportError:  # not built: supported() is False
    _C = None

_SUPPORTED = _C is not None and hasattr(_C, "decoder_stack") and hasattr(_C, "linear_bf16")
_get_num_threads = torch.get_num_threads
_empty = torch.empty
_BF16 = torch.bfloat16


def supported() -> bool:
    """Whether the extension is built with the fused decoder stack."""
    return _SUPPORTED


@dataclass(frozen=True, slots=True)
class StackShape:
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    scale: float | None = None  # of the attention scores; None: head_dim ** -0.5
    embed_scale: float = 1.0  # Granite's embedding_multiplier
    residual_scale: float = 1.0  # Granite's residual_multiplier
    sliding_window: int = 0  # every layer's attention window (Mistral v0.1, Phi-3-mini); 0: none
    # A mixture of experts' layers (csrc/cpu/moe_block.h): 0 experts where there are none.
    num_experts: int = 0
    top_k: int = 0
    moe_intermediate: int = 0
    renormalize: bool = True


@dataclass(frozen=True, slots=True)
class LayerWeights:
    input_norm: torch.Tensor  # (hidden,) bf16
    qkv: PackedLinearWeight  # (q_size + 2 * kv_size, hidden)
    o_proj: PackedLinearWeight  # (hidden, q_size)
    post_norm: torch.Tensor  # (hidden,) bf16
    gate_up: PackedLinearWeight | None  # (2 * intermediate, hidden): gate rows, then up rows; None: MoE
    down: PackedLinearWeight | None  # (hidden, intermediate)
    k_cache: torch.Tensor  # (num_blocks, block_size, num_kv_heads, head_dim) bf16, contiguous
    v_cache: torch.Tensor
    qkv_bias: torch.Tensor | None = None  # (q_size + 2 * kv_size,) bf16: Qwen2
    q_norm: torch.Tensor | None = None  # (head_dim,) bf16, with k_norm: Qwen3
    k_norm: torch.Tensor | None = None
    # A mixture-of-experts layer's router (num_experts, hidden) and experts, each (2 * moe_intermediate,
    # hidden) and (hidden, moe_intermediate), in place of gate_up and down.
    router: PackedLinearWeight | None = None
    expert_gate_up: list[PackedLinearWeight] | None = None
    expert_down: list[PackedLinearWeight] | None = None


class DecoderStack:
    """The model's weights and caches as the C++ stack's pointer table; keeps them alive."""

    def __init__(self, shape: StackShape, embed: torch.Tensor | PackedLinearWeight, final_norm: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, layers: list[LayerWeights]) -> None:
        """embed: (vocab, hidden) bf16, or a tied model's output projection packed (its only copy)."""
        if not _SUPPORTED:
            raise RuntimeError("engine._C lacks the decoder stack: build it with `python setup.py build_ext --inplace`")
        s = shape
        q_size, kv_size = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        if not layers or s.num_heads % s.num_kv_heads or s.head_dim % 2:
            raise ValueError(f"unsupported decoder shape {shape} with {len(layers)} layers")
        if isinstance(embed, PackedLinearWeight):
            if embed.in_features != s.hidden:
                raise ValueError(f"packed embed is ({embed.out_features}, {embed.in_features}), hidden is {s.hidden}")
            embed_data, vocab_size, embed_packed = embed.data, embed.out_features, True
        else:
            _check_dense(embed, (embed.shape[0], s.hidden), _BF16, "embed")
            embed_data, vocab_size, embed_packed = embed, embed.shape[0], False
        _check_dense(final_norm, (s.hidden,), _BF16, "final_norm")
        _check_dense(cos, (cos.shape[0], s.head_dim), torch.float32, "cos")
        _check_dense(sin, tuple(cos.shape), torch.float32, "sin")
        cache_shape = tuple(layers[0].k_cache.shape)
        if len(cache_shape) != 4 or cache_shape[2:] != (s.num_kv_heads, s.head_dim):
            raise ValueError(f"caches must be (num_blocks, block_size, {s.num_kv_heads}, {s.head_dim}), "
                             f"got {cache_shape}")
        rows = []
        expert_tables: list[torch.Tensor] = []  # each MoE layer's arrays of expert pointers
        biases: list[torch.Tensor | None] = []  # each layer's q/k/v bias in fp32, as the linear's store adds it
        for i, w in enumerate(layers):
            for name, packed, n, k in _linears(w, s, q_size + 2 * kv_size, q_size):
                if (packed.out_features, packed.in_features) != (n, k):
                    raise ValueError(f"layer {i} {name}: packed ({packed.out_features}, {packed.in_features}), "
                                     f"expected ({n}, {k})")
            _check_dense(w.input_norm, (s.hidden,), _BF16, f"layer {i} input_norm")
            _check_dense(w.post_norm, (s.hidden,), _BF16, f"layer {i} post_norm")
            _check_dense(w.k_cache, cache_shape, _BF16, f"layer {i} k_cache")
            _check_dense(w.v_cache, cache_shape, _BF16, f"layer {i} v_cache")
            if w.qkv_bias is not None:
                _check_dense(w.qkv_bias, (q_size + 2 * kv_size,), _BF16, f"layer {i} qkv_bias")
            biases.append(None if w.qkv_bias is None else w.qkv_bias.float().contiguous())
            if (w.q_norm is None) != (w.k_norm is None):
                raise ValueError(f"layer {i}: a q norm and a k norm go together")
            for name, norm in (("q_norm", w.q_norm), ("k_norm", w.k_norm)):
                if norm is not None:
                    _check_dense(norm, (s.head_dim,), _BF16, f"layer {i} {name}")
            moe = [0, 0, 0]
            if w.router is not None:
                assert w.expert_gate_up is not None and w.expert_down is not None  # _linears checked
                expert_tables += [torch.tensor([p.data.data_ptr() for p in experts], dtype=torch.int64)
                                  for experts in (w.expert_gate_up, w.expert_down)]
                moe = [w.router.data.data_ptr(), expert_tables[-2].data_ptr(), expert_tables[-1].data_ptr()]
            mlp = [w.gate_up, w.down]
            rows.append([w.input_norm.data_ptr(), w.qkv.data.data_ptr(), w.o_proj.data.data_ptr(),
                         w.post_norm.data_ptr()] + [0 if p is None else p.data.data_ptr() for p in mlp]
                        + [w.k_cache.data_ptr(), w.v_cache.data_ptr()]
                        + [0 if p is None or p.q4_1 is None else p.q4_1.data_ptr() for p in (w.qkv, w.o_proj, *mlp)]
                        + [0 if t is None else t.data_ptr() for t in (biases[-1], w.q_norm, w.k_norm)] + moe)
        self.shape = shape
        self._keep = (embed, final_norm, cos, sin, layers, expert_tables, biases)  # what the table points into
        self._table = torch.tensor(rows, dtype=torch.int64)
        # Everything but the per-step arguments, bound once (a step passes 6 more).
        self._fixed = dict(
            layers=self._table.data_ptr(), num_layers=len(layers), embed=embed_data.data_ptr(),
            embed_packed=embed_packed, vocab_size=vocab_size, final_norm=final_norm.data_ptr(), cos_table=cos.data_ptr(),
            sin_table=sin.data_ptr(), max_positions=cos.shape[0], num_blocks=cache_shape[0],
            block_size=cache_shape[1], hidden=s.hidden, num_heads=s.num_heads, num_kv_heads=s.num_kv_heads,
            head_dim=s.head_dim, intermediate=s.intermediate, eps=s.eps,
            scale=s.head_dim ** -0.5 if s.scale is None else s.scale, embed_scale=s.embed_scale,
            residual_scale=s.residual_scale, sliding_window=s.sliding_window, num_experts=s.num_experts,
            top_k=s.top_k, moe_intermediate=s.moe_intermediate, renormalize=s.renormalize,
        )

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: (T,) int64 -> final-normed hidden states (T, hidden) bf16."""
        t = input_ids.shape[0]
        ids, pos = _int_vector(input_ids, torch.int64, t), _int_vector(positions, torch.int64, t)
        slots = _int_vector(meta.slot_mapping, torch.int64, t)
        lens = meta.context_lens
        num_seqs = lens.shape[0]
        lens = _int_vector(lens, torch.int32, num_seqs)
        starts = _int_vector(meta.query_start_loc, torch.int32, num_seqs + 1)
        tables = meta.block_tables
        if (tables.dim() != 2 or tables.shape[0] != num_seqs or tables.dtype != torch.int32
                or not tables.is_contiguous()):
            tables = tables.to(torch.int32).contiguous().reshape(num_seqs, -1)
        out = _empty(t, self.shape.hidden, dtype=_BF16)
        if t:
            _C.decoder_stack(out=out.data_ptr(), input_ids=ids.data_ptr(), positions=pos.data_ptr(), num_tokens=t,
                             slot_mapping=slots.data_ptr(), block_tables=tables.data_ptr(),
                             context_lens=lens.data_ptr(), query_start_loc=starts.data_ptr(), num_seqs=num_seqs,
                             max_blocks_per_seq=tables.shape[1], num_threads=_get_num_threads(), **self._fixed)
        return out


def _linears(w: LayerWeights, s: StackShape, qkv_n: int, q_size: int) -> list[tuple[str, PackedLinearWeight, int, int]]:
    """(name, weight, out_features, in_features) of each linear of a layer: a dense one's MLP or a
    mixture of experts' router and experts. ValueError where a layer has neither or both."""
    linears = [("qkv", w.qkv, qkv_n, s.hidden), ("o_proj", w.o_proj, s.hidden, q_size)]
    dense = w.gate_up is not None and w.down is not None
    experts = (w.router is not None and w.expert_gate_up is not None and w.expert_down is not None
               and len(w.expert_gate_up) == len(w.expert_down) == s.num_experts > 0)
    if dense == experts:
        raise ValueError("a layer has either a dense MLP (gate_up, down) or a router and num_experts experts")
    if dense:
        assert w.gate_up is not None and w.down is not None
        return linears + [("gate_up", w.gate_up, 2 * s.intermediate, s.hidden),
                          ("down", w.down, s.hidden, s.intermediate)]
    assert w.router is not None and w.expert_gate_up is not None and w.expert_down is not None
    i = s.moe_intermediate
    return (linears + [("router", w.router, s.num_experts, s.hidden)]
            + [(f"expert {e} gate_up", p, 2 * i, s.hidden) for e, p in enumerate(w.expert_gate_up)]
            + [(f"expert {e} down", p, s.hidden, i) for e, p in enumerate(w.expert_down)])


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """F.silu(gate) * up for gate_up (..., 2n) bf16 on CPU whose first half is gate: (..., n) bf16."""
    if not _SUPPORTED:
        raise RuntimeError("engine._C lacks silu_and_mul_bf16")
    if gate_up.dtype != _BF16 or not gate_up.is_cpu or gate_up.dim() == 0 or gate_up.shape[-1] % 2:
        raise ValueError(f"silu_and_mul expects (..., 2n) bfloat16 on CPU, got {tuple(gate_up.shape)} "
                         f"{gate_up.dtype} on {gate_up.device}")
    n = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, 2 * n)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    out = _empty(*gate_up.shape[:-1], n, dtype=_BF16)
    if rows.shape[0] and n:
        _C.silu_and_mul_bf16(out=out.data_ptr(), gate_up=rows.data_ptr(), rows=rows.shape[0], n=n,
                             gate_up_row_stride=rows.stride(0), num_threads=_get_num_threads())
    return out


def _check_dense(t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, name: str) -> None:
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or not t.is_cpu or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous {dtype} CPU tensor {tuple(shape)}, got {tuple(t.shape)} "
                         f"{t.dtype} on {t.device}")


def _int_vector(t: torch.Tensor, dtype: torch.dtype, n: int) -> torch.Tensor:
    """t as a contiguous CPU (n,) vector of dtype (the kernel reads n entries)."""
    if t.shape != (n,):
        raise ValueError(f"expected a ({n},) index vector, got {tuple(t.shape)}")
    if t.dtype != dtype or not t.is_contiguous() or not t.is_cpu:
        t = t.to(device="cpu", dtype=dtype).contiguous()
    return t
