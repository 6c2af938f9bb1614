"""The GPU model runner's pieces: the profiling forward pass (device-agnostic, so it runs here on
CPU too) and, on a GPU, greedy generation with CUDA graphs equal to eager and to transformers, for a
dense model, a mixture of experts and Gemma 3 (local attention), with the KV cache sized from the memory left after profiling."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.loader.hf_loader import load_hf_folder
from engine.model_runner import ModelRunner


def _saved(model: torch.nn.Module, factory: pytest.TempPathFactory, name: str) -> tuple[str, torch.nn.Module]:
    """`model` (in eval mode) saved as a Hugging Face folder: (the folder, the model)."""
    path = factory.mktemp(name)
    model.eval().save_pretrained(path, safe_serialization=True)
    return str(path), model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, torch.nn.Module]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                                      max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False)
    return _saved(transformers.LlamaForCausalLM(config), tmp_path_factory, "tiny-llama-gpu")


def test_profile_forward_runs_the_largest_batch(tiny_llama: tuple[str, torch.nn.Module]) -> None:
    config, weights = load_hf_folder(tiny_llama[0], torch.float32)
    runner = ModelRunner(config, weights, EngineConfig(block_size=8, kv_cache_bytes=4 * 1024 * 1024))
    assert runner.graphs is None  # CPU: no graphs
    runner._profile_forward([40, 13], num_logit_rows=5)  # two sequences, one ending mid-block
    assert runner.kv_cache[0, 0].flatten(0, 1).flatten(1).abs().sum(1).count_nonzero() == 40 + 13


@pytest.fixture(scope="module")
def tiny_qwen3_moe(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, torch.nn.Module]:
    """Eight experts, two a token, hidden and moe sizes no multiple of the fused kernel's tiles."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(
        vocab_size=300, hidden_size=96, intermediate_size=160, moe_intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, initializer_range=0.2, max_position_embeddings=256, tie_word_embeddings=False)
    return _saved(transformers.Qwen3MoeForCausalLM(config), tmp_path_factory, "tiny-qwen3moe-gpu")


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, torch.nn.Module]:
    """Local layers with a 7-token window (prompts of 9 and 12 tokens decoded run past it), a global one."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=300, hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, sliding_window=7, layer_types=["sliding_attention", "full_attention",
                                                                           "sliding_attention"],
        query_pre_attn_scalar=32, initializer_range=0.2, max_position_embeddings=256)
    return _saved(transformers.Gemma3ForCausalLM(config), tmp_path_factory, "tiny-gemma3-gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_graphs_match_eager_and_transformers(tiny_llama: tuple[str, torch.nn.Module],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_graphs_match_eager_and_transformers(*tiny_llama, monkeypatch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_mixture_of_experts_decodes_in_graphs(tiny_qwen3_moe: tuple[str, torch.nn.Module],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The experts run in the fused Triton kernel, which the decode graphs capture."""
    _assert_graphs_match_eager_and_transformers(*tiny_qwen3_moe, monkeypatch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gemma3_decodes_its_windows_in_graphs(tiny_gemma3: tuple[str, torch.nn.Module],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The local layers' window in the GPU attention kernels, captured in the decode graphs."""
    _assert_graphs_match_eager_and_transformers(*tiny_gemma3, monkeypatch)


def _assert_graphs_match_eager_and_transformers(path: str, hf_model: torch.nn.Module,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import LLM, SamplingParams

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import gpu_models  # the random-model helpers of bench/gpu_engine_check.py

    gpu_models.write_tokenizer(gpu_models.build_tokenizer(300), Path(path))
    prompts = torch.randint(3, 300, (5, 9), generator=torch.Generator().manual_seed(2)).tolist()
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outputs = {}
    for graphs in ("1", "0"):
        monkeypatch.setenv("LLMAAS_CUDA_GRAPHS", graphs)
        llm = LLM(model=path, dtype=torch.float32, device="cuda", gpu_memory_utilization=0.3, max_num_seqs=8,
                  max_num_batched_tokens=512)
        runner = llm.engine.runner
        assert (runner.graphs is not None) == (graphs == "1")
        assert runner.num_blocks * runner.block_size > 100_000  # sized from free memory, not kv_cache_bytes
        outputs[graphs] = [r.outputs[0].token_ids for r in llm.generate(prompts, params)]
        del llm, runner
        torch.cuda.empty_cache()
    assert outputs["1"] == outputs["0"]
    hf = hf_model.to("cuda")
    for prompt, got in zip(prompts, outputs["1"]):
        ids = torch.tensor([prompt], device="cuda")
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                           min_new_tokens=12, pad_token_id=0)[0, len(prompt):].tolist()
        assert list(got) == want
