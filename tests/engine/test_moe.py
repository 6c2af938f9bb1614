"""Mixture of experts: routing, the experts' sum against a token-by-token oracle (plain and packed bf16
weights), the checkpoint layouts brought to one, the MoE configs read from config.json, and a packed
bf16 model against its float32 self. Logit parity with transformers is in test_tiny_model_logits.py
(HF folders) and tests/loader/test_gguf_families.py (GGUF files)."""
from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.kernels import linear as linear_kernel
from engine.kernels import moe
from engine.loader.errors import ModelLoadError
from engine.loader.hf_loader import config_from_hf
from engine.loader.moe_layout import unstack_experts
from engine.models.moe import SparseMoeBlock
from tests.engine.tiny_folders import assert_greedy_matches_transformers, save_folder

E, H, I, K = 6, 64, 40, 2


def _expert_weights(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(E, 2 * I, H, generator=gen).mul(0.2).to(dtype),
            torch.randn(E, H, I, generator=gen).mul(0.2).to(dtype))


def test_route_takes_the_top_k_of_the_softmax_and_renormalises_on_request() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 3.5, -2.0, 0.5]])
    weights, ids = moe.route(logits, 2, renormalize=False)
    probs = torch.softmax(logits, dim=-1)
    assert ids.tolist() == [[1, 2], [1, 0]]
    torch.testing.assert_close(weights, probs.gather(1, ids))

    weights, ids = moe.route(logits, 2, renormalize=True)
    # Granite's way: a softmax over the chosen logits alone
    torch.testing.assert_close(weights, torch.softmax(logits.gather(1, ids), dim=-1))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


def test_experts_forward_equals_the_token_by_token_sum() -> None:
    w_gate_up, w_down = _expert_weights()
    x = torch.randn(13, H, generator=torch.Generator().manual_seed(1))
    # Experts 0 and 5 chosen by no token: they must contribute nothing and cost nothing.
    ids = torch.randint(1, E - 1, (13, K), generator=torch.Generator().manual_seed(2))
    ids[:, 1] = (ids[:, 0] % (E - 2)) + 1
    ids[:, 1] = torch.where(ids[:, 1] == ids[:, 0], (ids[:, 0] % (E - 2)) + 1, ids[:, 1])
    weights = torch.rand(13, K, generator=torch.Generator().manual_seed(3))
    none = [None] * E

    got = moe.experts_forward(x, weights, ids, w_gate_up.unbind(0), w_down.unbind(0), none, none)

    torch.testing.assert_close(got, moe.reference(x, weights, ids, w_gate_up, w_down), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not linear_kernel.supported(), reason="engine._C lacks the bf16 linear kernel")
@pytest.mark.parametrize("num_tokens", [1, 4, 37])
def test_packed_bf16_experts_equal_the_oracle(num_tokens: int) -> None:
    w_gate_up, w_down = _expert_weights(torch.bfloat16)
    block = SparseMoeBlock(_config())
    router = torch.randn(E, H, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    weights = {"gate.weight": router} | {f"experts.{e}.{p}.weight": t for e in range(E) for p, t in
                                         zip(("gate_proj", "up_proj"), w_gate_up[e].chunk(2))}
    weights |= {f"experts.{e}.down_proj.weight": w_down[e] for e in range(E)}
    block.load(weights.pop, "", torch.bfloat16, torch.device("cpu"))
    assert not weights
    block.gate.pack()
    block.pack()
    assert block.w_gate_up is None and all(p is not None for p in block.packed_gate_up)
    x = torch.randn(num_tokens, H, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)

    got = block(x)

    route_weights, ids = moe.route(x.float() @ router.float().T, K, renormalize=True)
    want = moe.reference(x, route_weights, ids, w_gate_up, w_down)
    # bf16 rounds the inputs of the down projection and the output
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=2e-2)


def _config(**overrides: object) -> ModelConfig:
    fields: dict = dict(architecture="mixtral", vocab_size=100, hidden_size=H, intermediate_size=I, num_layers=1,
                        num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=1e4,
                        max_position_embeddings=64, tie_word_embeddings=False, num_experts=E,
                        num_experts_per_tok=K, moe_intermediate_size=I)
    return ModelConfig(**(fields | overrides))


@pytest.mark.parametrize("layout", ["mixtral", "granitemoe", "transformers5", "gguf"])
def test_each_checkpoint_layout_becomes_the_per_expert_names(layout: str) -> None:
    w_gate_up, w_down = _expert_weights()
    router = torch.randn(E, H)
    p = "model.layers.3."
    if layout == "mixtral":
        weights = {p + "block_sparse_moe.gate.weight": router}
        for e in range(E):
            gate, up = w_gate_up[e].chunk(2)
            weights |= {f"{p}block_sparse_moe.experts.{e}.w1.weight": gate,
                        f"{p}block_sparse_moe.experts.{e}.w3.weight": up,
                        f"{p}block_sparse_moe.experts.{e}.w2.weight": w_down[e]}
    elif layout == "granitemoe":
        weights = {p + "block_sparse_moe.router.layer.weight": router,
                   p + "block_sparse_moe.input_linear.weight": w_gate_up,
                   p + "block_sparse_moe.output_linear.weight": w_down}
    elif layout == "transformers5":
        weights = {p + "mlp.gate.weight": router, p + "mlp.experts.gate_up_proj": w_gate_up,
                   p + "mlp.experts.down_proj": w_down}
    else:
        gate, up = w_gate_up.chunk(2, dim=1)
        weights = {p + "mlp.gate.weight": router, p + "mlp.experts.gate_proj.weight": gate,
                   p + "mlp.experts.up_proj.weight": up, p + "mlp.experts.down_proj.weight": w_down}
    weights["model.norm.weight"] = torch.ones(H)

    unstack_experts(weights)

    want = {p + "mlp.gate.weight": router, "model.norm.weight": torch.ones(H)}
    for e in range(E):
        gate, up = w_gate_up[e].chunk(2)
        want |= {f"{p}mlp.experts.{e}.gate_proj.weight": gate, f"{p}mlp.experts.{e}.up_proj.weight": up,
                 f"{p}mlp.experts.{e}.down_proj.weight": w_down[e]}
    assert weights.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(weights[name], tensor), name


def test_a_stacked_tensor_of_the_wrong_rank_is_left_for_the_shape_check() -> None:
    weights = {"model.layers.0.block_sparse_moe.input_linear.weight": torch.zeros(4, 8)}
    unstack_experts(weights)
    assert list(weights) == ["model.layers.0.block_sparse_moe.input_linear.weight"]


def _raw(**overrides: object) -> dict:
    raw = dict(architectures=["Qwen3MoeForCausalLM"], hidden_size=64, intermediate_size=96, num_hidden_layers=4,
               num_attention_heads=4, max_position_embeddings=128, vocab_size=100, num_experts=8,
               num_experts_per_tok=2, moe_intermediate_size=32)
    return raw | overrides


def test_qwen3_moe_config() -> None:
    config = config_from_hf(_raw(norm_topk_prob=True, mlp_only_layers=[0], decoder_sparse_step=2), "m")
    assert (config.architecture, config.num_experts, config.num_experts_per_tok) == ("qwen3moe", 8, 2)
    assert (config.intermediate_size, config.moe_intermediate_size, config.norm_topk_prob) == (96, 32, True)
    # layer 0 named dense; with a step of 2 layers 0 and 2 are dense too: 1 and 3 are sparse
    assert config.dense_layers == (0, 2)
    assert [config.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert config_from_hf(_raw(), "m").norm_topk_prob is False  # transformers' default


def test_mixtral_and_granite_moe_configs() -> None:
    mixtral = config_from_hf(_raw(architectures=["MixtralForCausalLM"], num_experts=None, num_local_experts=8,
                                  intermediate_size=48), "m")
    assert (mixtral.num_experts, mixtral.moe_intermediate_size, mixtral.norm_topk_prob) == (8, 48, True)
    assert mixtral.dense_layers == ()
    granite = config_from_hf(_raw(architectures=["GraniteMoeForCausalLM"], num_local_experts=4, num_experts=None,
                                  intermediate_size=40, embedding_multiplier=12.0), "m")
    assert (granite.architecture, granite.num_experts, granite.embedding_multiplier) == ("granitemoe", 4, 12.0)


@pytest.mark.parametrize("overrides,why", [
    (dict(num_experts_per_tok=9), "0 < num_experts_per_tok <= num_experts"),
    (dict(num_experts=None), "needs num_experts"),
    (dict(shared_expert_intermediate_size=64), "shared experts are unsupported"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu' is unsupported"),
])
def test_moe_configs_the_decoder_cannot_run_are_refused(overrides: dict, why: str) -> None:
    with pytest.raises(ModelLoadError, match=why):
        config_from_hf(_raw(**overrides), "m")


@pytest.fixture(scope="module")
def tiny_qwen3_moe(tmp_path_factory: pytest.TempPathFactory):
    """A random Qwen3-MoE folder (with a word-level tokenizer) and the transformers model it holds."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, initializer_range=0.2, bos_token_id=1, eos_token_id=2, max_position_embeddings=256)
    model = transformers.Qwen3MoeForCausalLM(config).eval()
    return save_folder(model, tmp_path_factory.mktemp("qwen3moe")), model


def test_the_engine_decodes_a_moe_model_batched_as_transformers_does(tiny_qwen3_moe) -> None:
    """Prompts run together (chunked prefill, then decode steps whose tokens choose different experts)
    give transformers' greedy tokens."""
    assert_greedy_matches_transformers(*tiny_qwen3_moe)
