"""Logits parity with transformers on random-weight tiny models saved with save_pretrained
(safetensors), through the paged cache: a prompt computed in chunks, then decode steps, for two
sequences batched together. A Llama with GQA and Llama 3 rope scaling; a Qwen2 (q/k/v biases); a
Mistral v0.1 (a 20-token window in every layer); a
Mistral3ForConditionalGeneration (Mistral-Small 3.x: its language model, the vision tower left out); a
Qwen3 (per-head q/k norms, a head_dim that is not hidden_size / heads, tied embeddings); a Granite
(its embedding, residual, attention and logits scales); a Phi-3 (q/k/v and gate/up stored fused); and the
mixtures of experts Mixtral (w1/w3/w2 experts), Qwen3-MoE (a dense layer among sparse ones, weights not
renormalised) and Granite MoE (experts stored stacked, Granite's scales); a Gemma 3 (local layers with a
20-token window among global ones, each kind with its own rotary, four norms a layer, GELU)."""
from __future__ import annotations

import pytest
import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.forward_context import forward_context
from engine.loader.hf_loader import load_hf_folder
from engine.model_runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence


def _tiny_model(family: str) -> torch.nn.Module:
    import transformers

    common = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=500, max_position_embeddings=512, rope_theta=10000.0,
                  initializer_range=0.2)  # weights large enough that attention moves the logits
    if family == "llama":
        config = transformers.LlamaConfig(
            **common, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
        return transformers.LlamaForCausalLM(config)
    if family == "mistral":  # Mistral v0.1's local attention in every layer
        return transformers.MistralForCausalLM(transformers.MistralConfig(**common, sliding_window=20,
                                                                         tie_word_embeddings=False))
    if family == "mistral3":  # Mistral-Small 3.1/3.2: a vision-language checkpoint, its language model served
        text = transformers.MistralConfig(**common, head_dim=16, tie_word_embeddings=False)
        vision = transformers.PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=32, patch_size=16)
        return transformers.Mistral3ForConditionalGeneration(transformers.Mistral3Config(text_config=text,
                                                                                         vision_config=vision))
    if family == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, tie_word_embeddings=False))
    if family == "phi3":
        return transformers.Phi3ForCausalLM(transformers.Phi3Config(**common, tie_word_embeddings=False,
                                                                   pad_token_id=0))
    if family == "granite":
        config = transformers.GraniteConfig(**common, tie_word_embeddings=True, embedding_multiplier=12.0,
                                            residual_multiplier=0.22, attention_multiplier=0.0625, logits_scaling=8.0)
        return transformers.GraniteForCausalLM(config)
    if family == "mixtral":
        config = transformers.MixtralConfig(**common | {"intermediate_size": 48}, num_local_experts=8,
                                            num_experts_per_tok=2, tie_word_embeddings=False)
        return transformers.MixtralForCausalLM(config)
    if family == "qwen3moe":
        config = transformers.Qwen3MoeConfig(**common, head_dim=16, num_experts=8, num_experts_per_tok=3,
                                             moe_intermediate_size=32, mlp_only_layers=[1], norm_topk_prob=False,
                                             tie_word_embeddings=False)
        return transformers.Qwen3MoeForCausalLM(config)
    if family == "granitemoe":
        config = transformers.GraniteMoeConfig(**common | {"intermediate_size": 40}, num_local_experts=6,
                                               num_experts_per_tok=2, tie_word_embeddings=True,
                                               embedding_multiplier=12.0, residual_multiplier=0.22,
                                               attention_multiplier=0.0625, logits_scaling=8.0)
        return transformers.GraniteMoeForCausalLM(config)
    if family == "gemma3":
        config = transformers.Gemma3TextConfig(**common | {"num_hidden_layers": 7}, head_dim=16, sliding_window=20,
                                               query_pre_attn_scalar=24, tie_word_embeddings=True,
                                               rope_scaling={"rope_type": "linear", "factor": 4.0})
        return transformers.Gemma3ForCausalLM(config)
    config = transformers.Qwen3Config(**common, head_dim=16, tie_word_embeddings=True)
    return transformers.Qwen3ForCausalLM(config)


@pytest.fixture(scope="module", params=["llama", "mistral", "mistral3", "qwen2", "qwen3", "granite", "phi3",
                                                          "mixtral", "qwen3moe", "granitemoe", "gemma3"])
def tiny_model(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, torch.nn.Module]:
    torch.manual_seed(0)
    model = _tiny_model(request.param).eval()
    with torch.no_grad():  # transformers starts biases and norm gains at 0 and 1: random ones test them
        for name, tensor in model.named_parameters():
            if name.endswith(("bias", "norm.weight")):
                tensor.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.1)
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(path, safe_serialization=True)
    return request.param, str(path), model


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_chunked_prefill_and_decode_logits_match(tiny_model, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMAAS_ATTENTION_BACKEND", backend)
    family, path, hf_model = tiny_model
    config, weights = load_hf_folder(path, torch.float32)
    assert config.architecture == {"mistral": "llama", "mistral3": "llama"}.get(family, family)
    assert config.num_kv_heads == 2
    assert (config.qkv_bias, config.qk_norm) == (family == "qwen2", family in ("qwen3", "qwen3moe", "gemma3"))
    # (MistralConfig sets a 4096 window by default, which mistral3 keeps)
    assert config.sliding_layers == {"gemma3": (0, 1, 2, 3, 4, 6), "mistral": (0, 1, 2), "mistral3": (0, 1, 2)}.get(family, ())
    assert config.num_experts == {"mixtral": 8, "qwen3moe": 8, "granitemoe": 6}.get(family, 0)
    assert config.dense_layers == ((1,) if family == "qwen3moe" else ())
    engine_config = EngineConfig(block_size=8, kv_cache_bytes=64 * 1024 * 1024)
    runner = ModelRunner(config, weights, engine_config)
    blocks = BlockManager(runner.num_blocks, engine_config.block_size)

    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 500, (n,), generator=gen).tolist() for n in (150, 37)]
    decode_tokens = [torch.randint(0, 500, (5,), generator=gen).tolist() for _ in prompts]
    seqs = [Sequence(seq_id=i, request_id=str(i), index=0, token_ids=list(p), num_prompt_tokens=len(p),
                     params=SamplingParams(), max_num_tokens=400) for i, p in enumerate(prompts)]

    # Positions at which each sequence's logits are produced, step by step.
    got: list[dict[int, torch.Tensor]] = [{}, {}]
    chunks = [[60, 37], [90, 0]]
    for step in range(len(chunks)):
        batch = ScheduledBatch()
        for seq, n in zip(seqs, chunks[step]):
            if n:
                assert blocks.allocate(seq, n)
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
        _run(runner, batch, got, seqs)
    for step in range(5):
        batch = ScheduledBatch()
        for i, seq in enumerate(seqs):
            seq.token_ids.append(decode_tokens[i][step])
            assert blocks.allocate(seq, 1)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(1)
        _run(runner, batch, got, seqs)

    with torch.inference_mode():
        for i, seq in enumerate(seqs):
            want = hf_model(torch.tensor([seq.token_ids])).logits[0]
            for position, logits in got[i].items():
                torch.testing.assert_close(logits, want[position], atol=2e-4, rtol=2e-4)
            assert len(got[i]) == len(seq.token_ids)


def _run(runner: ModelRunner, batch: ScheduledBatch, got: list[dict[int, torch.Tensor]], seqs: list[Sequence]) -> None:
    input_ids, positions, metadata, _, _ = runner._prepare(batch)
    with torch.inference_mode(), forward_context(metadata):
        logits = runner.model.compute_logits(runner.model(input_ids, positions))
    row = 0
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        for j in range(n):
            got[seqs.index(seq)][seq.num_computed_tokens + j] = logits[row + j]
        row += n
        seq.num_computed_tokens += n
