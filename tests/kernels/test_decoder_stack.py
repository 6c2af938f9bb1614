"""The fused bf16 decoder stack (engine/kernels/decoder_stack.py) against the per-op path of the
same model (Llama, and its Qwen2, Qwen3, Granite, mixture-of-experts and sliding-window variants), and its SiLU-and-multiply against torch."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from engine.config import ModelConfig
from engine.forward_context import AttentionMetadata, forward_context
from engine.kernels import decoder_stack
from engine.models.llama import FUSED_ENV, LlamaForCausalLM

pytestmark = pytest.mark.skipif(not decoder_stack.supported(), reason="engine._C lacks the decoder stack")

BLOCK = 4
CONFIG = ModelConfig(architecture="llama", vocab_size=50, hidden_size=64, intermediate_size=72, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
                     max_position_embeddings=64, tie_word_embeddings=False)
VARIANTS = {
    "llama": CONFIG,
    "qwen2": dataclasses.replace(CONFIG, architecture="qwen2", qkv_bias=True),
    "qwen3": dataclasses.replace(CONFIG, architecture="qwen3", qk_norm=True, head_dim=24),  # head_dim * heads != hidden
    "granite": dataclasses.replace(CONFIG, architecture="granite", embedding_multiplier=12.0, residual_multiplier=0.22,
                                   attention_multiplier=0.0625, logits_scaling=8.0),
    # Mixtures of experts: Mixtral's (every layer sparse, renormalised), Qwen3-MoE's (a dense layer too, not
    # renormalised, per-head norms)
    "mixtral": dataclasses.replace(CONFIG, architecture="mixtral", num_experts=5, num_experts_per_tok=2,
                                   moe_intermediate_size=40),
    "qwen3moe": dataclasses.replace(CONFIG, architecture="qwen3moe", qk_norm=True, num_experts=6,
                                    num_experts_per_tok=3, moe_intermediate_size=24, norm_topk_prob=False,
                                    dense_layers=(1,)),
    # Mistral v0.1: every layer attends within a window (5 positions, where sequences reach 23)
    "mistral": dataclasses.replace(CONFIG, sliding_window=5, sliding_layers=tuple(range(CONFIG.num_layers))),
}


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in bf16 units in the last place (same-sign values; NaN-free inputs)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


@pytest.mark.parametrize("rows, n", [(1, 72), (3, 1536), (64, 1536)])  # tail lanes; many rows run threaded
def test_silu_and_mul_matches_torch(rows: int, n: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    gate_up = (torch.randn(rows, 2 * n, generator=gen) * 4).to(torch.bfloat16)
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # saturated exp, both signs of zero
    gate, up = gate_up.split(n, dim=-1)
    expected = F.silu(gate) * up
    got = decoder_stack.silu_and_mul(gate_up)
    assert got.shape == expected.shape and got.dtype == torch.bfloat16
    # torch's exp is Sleef's, ours a polynomial: a rare element lands one bf16 ulp away.
    close = torch.isclose(got.float(), expected.float(), rtol=2 ** -7, atol=1e-30)
    assert bool(close.all())
    assert (got != expected).float().mean().item() < 0.01


def test_silu_and_mul_rejects_odd_width() -> None:
    with pytest.raises(ValueError):
        decoder_stack.silu_and_mul(torch.zeros(2, 5, dtype=torch.bfloat16))


def random_model(c: ModelConfig = CONFIG) -> LlamaForCausalLM:
    gen = torch.Generator().manual_seed(0)
    q, kv, h, i = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size, c.intermediate_size

    def rnd(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    weights = {"model.embed_tokens.weight": rnd(c.vocab_size, h, scale=1.0), "model.norm.weight": 1 + rnd(h),
               "lm_head.weight": rnd(c.vocab_size, h)}
    for layer in range(c.num_layers):
        p = f"model.layers.{layer}."
        mlp = [("mlp.gate_proj", (i, h)), ("mlp.up_proj", (i, h)), ("mlp.down_proj", (h, i))]
        if c.is_moe_layer(layer):
            e, m = c.num_experts, c.moe_intermediate_size
            mlp = [("mlp.gate", (e, h))] + [(f"mlp.experts.{x}.{name}", shape) for x in range(e) for name, shape in
                                            (("gate_proj", (m, h)), ("up_proj", (m, h)), ("down_proj", (h, m)))]
        for name, shape in (("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                            ("self_attn.o_proj", (h, q)), *mlp):
            weights[p + name + ".weight"] = rnd(*shape)
        weights[p + "input_layernorm.weight"] = 1 + rnd(h)
        weights[p + "post_attention_layernorm.weight"] = 1 + rnd(h)
        if c.qkv_bias:
            for name, n in (("q", q), ("k", kv), ("v", kv)):
                weights[p + f"self_attn.{name}_proj.bias"] = rnd(n)
        if c.qk_norm:
            weights[p + "self_attn.q_norm.weight"] = 1 + rnd(c.head_dim)
            weights[p + "self_attn.k_norm.weight"] = 1 + rnd(c.head_dim)
    with torch.device("meta"):
        model = LlamaForCausalLM(c)
    model.load_weights(weights, torch.bfloat16, torch.device("cpu"))
    return model.eval()


def bind_caches(model: LlamaForCausalLM, num_blocks: int) -> torch.Tensor:
    c = model.config
    cache = torch.zeros(2, c.num_layers, num_blocks, BLOCK, c.num_kv_heads, c.head_dim, dtype=torch.bfloat16)
    for i, attn in enumerate(model.attention_layers()):
        attn.k_cache, attn.v_cache = cache[0, i], cache[1, i]
    return cache


def step_inputs(tokens: list[list[int]], spans: list[tuple[int, int]], tables: list[list[int]]):
    """A mixed batch: sequence s computes tokens[s][start:end] with cache blocks tables[s]."""
    ids, positions, slots, starts = [], [], [], [0]
    for toks, (start, end), table in zip(tokens, spans, tables):
        ids += toks[start:end]
        positions += range(start, end)
        slots += [table[p // BLOCK] * BLOCK + p % BLOCK for p in range(start, end)]
        starts.append(starts[-1] + end - start)
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots), block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                                                    dtype=torch.int32),
        context_lens=torch.tensor([end for _, end in spans], dtype=torch.int32),
        query_start_loc=torch.tensor(starts, dtype=torch.int32), max_query_len=max(e - s for s, e in spans),
        max_context_len=max(e for _, e in spans))
    return torch.tensor(ids), torch.tensor(positions), meta


def run_steps(model: LlamaForCausalLM, fused: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[torch.Tensor],
                                                                                               torch.Tensor]:
    monkeypatch.setenv(FUSED_ENV, "1" if fused else "0")
    cache = bind_caches(model, num_blocks=16)
    gen = torch.Generator().manual_seed(1)
    tokens = [torch.randint(0, CONFIG.vocab_size, (n,), generator=gen).tolist() for n in (23, 6, 9)]
    tables = [[3, 7, 1, 9, 4, 12], [0, 2], [5, 6, 8]]
    # Prefill (the third sequence in two chunks), then chunk + decodes mixed, then decodes.
    steps = [[(0, 21), (0, 5), (0, 4)], [(21, 22), (5, 6), (4, 9)], [(22, 23)]]
    outputs = []
    for spans in steps:
        n = len(spans)
        ids, positions, meta = step_inputs(tokens[:n], spans, tables[:n])
        with torch.inference_mode(), forward_context(meta):
            outputs.append(model(ids, positions))
    assert (model._stack is not None) == fused
    return outputs, cache


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_stack_matches_per_op_path(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(VARIANTS[variant])
    reference, ref_cache = run_steps(model, fused=False, monkeypatch=monkeypatch)
    got, cache = run_steps(model, fused=True, monkeypatch=monkeypatch)
    for r, g in zip(reference, got):
        assert g.shape == r.shape and g.dtype == torch.bfloat16
        assert int(bf16_ulps(g, r).max()) <= 2  # only SiLU's exp may differ, by an ulp, then propagate
        assert (g == r).float().mean().item() > 0.95
    assert int(bf16_ulps(cache, ref_cache).max()) <= 2
    assert (cache != 0).any()


def test_layers_with_different_windows_take_the_per_op_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack applies one window to every layer: Qwen2's, local from some layer on, is not its to run."""
    model = random_model(dataclasses.replace(CONFIG, architecture="qwen2", qkv_bias=True, sliding_window=5,
                                             sliding_layers=(1,)))
    monkeypatch.setenv(FUSED_ENV, "1")
    bind_caches(model, num_blocks=16)
    assert model._fused_stack() is None


def test_fused_stack_rebuilds_for_new_caches_and_checks_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model()
    run_steps(model, fused=True, monkeypatch=monkeypatch)
    first = model._stack
    bind_caches(model, num_blocks=16)  # what a runner does when it binds a new cache
    ids, positions, meta = step_inputs([[1, 2]], [(0, 2)], [[0]])
    with torch.inference_mode(), forward_context(meta):
        model(ids, positions)
        assert model._stack is not first
        with pytest.raises(ValueError, match="vocabulary"):
            model(torch.tensor([1, CONFIG.vocab_size]), positions)
        with pytest.raises(ValueError, match="rotary"):
            model(ids, torch.tensor([0, CONFIG.max_position_embeddings]))


def test_stack_rejects_mismatched_cache() -> None:
    model = random_model()
    bind_caches(model, num_blocks=4)
    model.layers[1].self_attn.attn.k_cache = torch.zeros(4, BLOCK, 1, CONFIG.head_dim, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="k_cache"):
        model._fused_stack()
