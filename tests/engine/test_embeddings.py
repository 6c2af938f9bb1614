"""Embeddings (engine/pooling.py) on a random tiny Qwen3 saved with save_pretrained: the engine's
last-token and mean-pooled unit vectors equal transformers' final hidden states pooled and
normalised, for prompts batched in one step and one computed in chunks; a bare Qwen3Model
checkpoint loads; the engine's task is enforced both ways; aborts and the prefix cache behave."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.errors import InvalidRequestError, PromptTooLongError
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.pooling import folder_matryoshka, shorten
from engine.sampling_params import SamplingParams
from tests.engine.tiny_folders import write_word_tokenizer

VOCAB = 500
BUDGET = 64  # max_num_batched_tokens: the 150-token prompt takes three steps


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    """(a Qwen3ForCausalLM folder with its own lm_head, the same decoder saved bare as Qwen3Model,
    that decoder)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3Config(hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                      num_attention_heads=8, num_key_value_heads=2, head_dim=16, vocab_size=VOCAB,
                                      max_position_embeddings=512, rope_theta=10000.0, initializer_range=0.2,
                                      tie_word_embeddings=False)
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # transformers starts norm gains at 1: random ones test them
        for name, tensor in model.named_parameters():
            if name.endswith("norm.weight"):
                tensor.normal_(1.0, 0.1)
    causal, bare = tmp_path_factory.mktemp("qwen3-causal"), tmp_path_factory.mktemp("qwen3-bare")
    model.save_pretrained(causal, safe_serialization=True)
    model.model.save_pretrained(bare, safe_serialization=True)
    for folder in (causal, bare):
        write_word_tokenizer(folder, VOCAB)
    assert json.loads((bare / "config.json").read_text())["architectures"] == ["Qwen3Model"]
    return causal, bare, model.model


def _engine(folder: Path, pooling: str | None, **overrides: object) -> LLMEngine:
    config = EngineConfig(task="embed", pooling=pooling, block_size=8, kv_cache_bytes=8 * 1024 * 1024,
                          max_num_batched_tokens=BUDGET, **overrides)  # type: ignore[arg-type]
    return LLMEngine(str(folder), config)


def _want(decoder: torch.nn.Module, prompt: list[int], pooling: str) -> torch.Tensor:
    with torch.inference_mode():
        hidden = decoder(torch.tensor([prompt])).last_hidden_state[0]  # after the final norm
    vector = hidden[-1] if pooling == "last" else hidden.mean(dim=0)
    return torch.nn.functional.normalize(vector.float(), dim=0)


def _run(engine: LLMEngine, prompts: dict[str, list[int]]) -> tuple[dict[str, RequestOutput], list[int]]:
    """Embeds the prompts (in this order); their outputs by id, and each step's batch size."""
    for request_id, prompt in prompts.items():
        engine.add_embedding_request(request_id, prompt)
    outputs: dict[str, RequestOutput] = {}
    sizes: list[int] = []
    while engine.has_unfinished_requests():
        sizes.append(len(engine.scheduler.running) + len(engine.scheduler.waiting))
        outputs |= {o.request_id: o for o in engine.step()}
    return outputs, sizes


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_vectors_match_transformers_batched_and_chunked(tiny_qwen3, pooling: str) -> None:
    causal, _, decoder = tiny_qwen3
    engine = _engine(causal, pooling)
    assert engine.runner.model.lm_head is None  # the checkpoint's is dropped
    gen = torch.Generator().manual_seed(1)
    # Short ones first: the first step holds all three, the long one continuing in chunks.
    prompts = {f"r{n}": torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in (37, 5, 150)}
    outputs, sizes = _run(engine, prompts)
    assert sizes[0] == 3 and len(sizes) == 3  # 37 + 5 + 22, then 64, then 64
    for request_id, prompt in prompts.items():
        out = outputs[request_id]
        assert out.finished and out.deltas == [] and out.embedding is not None
        assert out.usage is not None and (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(prompt), 0)
        got = torch.tensor(out.embedding)
        assert got.shape == (64,) and abs(got.norm().item() - 1.0) < 1e-5
        torch.testing.assert_close(got, _want(decoder, prompt, pooling), atol=1e-4, rtol=1e-4)
    load = engine.load()
    assert load.num_free_blocks == load.num_blocks and engine.stats.prompt_tokens == 192


def test_bare_checkpoint_and_sentence_transformers_pooling(tiny_qwen3) -> None:
    """A bare Qwen3Model folder (no lm_head, no "model." prefix) loads; its 1_Pooling config picks
    mean pooling, which turns the prefix cache off (every position's state is needed)."""
    _, bare, decoder = tiny_qwen3
    (bare / "1_Pooling").mkdir(exist_ok=True)
    (bare / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True, "pooling_mode_lasttoken": False}))
    try:
        engine = _engine(bare, None)
    finally:
        (bare / "1_Pooling" / "config.json").unlink()
    assert engine.pooling == "mean" and not engine.block_manager.enable_prefix_caching
    prompt = list(range(3, 43))
    first, _ = _run(engine, {"a": prompt})
    again, _ = _run(engine, {"b": prompt})
    assert again["b"].usage is not None and again["b"].usage.cached_tokens == 0
    for out in (first["a"], again["b"]):
        torch.testing.assert_close(torch.tensor(out.embedding), _want(decoder, prompt, "mean"), atol=1e-4, rtol=1e-4)


def test_last_token_pooling_reuses_cached_prefixes(tiny_qwen3) -> None:
    causal, _, decoder = tiny_qwen3
    engine = _engine(causal, "last")
    prompt = list(range(10, 60))
    _run(engine, {"a": prompt})
    outputs, _ = _run(engine, {"b": prompt})
    usage = outputs["b"].usage
    assert usage is not None and usage.cached_tokens == 48  # all full blocks but the last position's
    torch.testing.assert_close(torch.tensor(outputs["b"].embedding), _want(decoder, prompt, "last"),
                               atol=1e-4, rtol=1e-4)


def test_task_is_enforced_and_prompts_checked(tiny_qwen3) -> None:
    causal, _, _ = tiny_qwen3
    embedder = _engine(causal, "last", max_model_len=100)
    with pytest.raises(InvalidRequestError, match="serves embeddings only"):
        embedder.add_request("g", [1, 2, 3], SamplingParams())
    with pytest.raises(PromptTooLongError):  # (100 fit: an embedding generates no token after its prompt)
        embedder.add_embedding_request("long", list(range(101)))
    with pytest.raises(InvalidRequestError, match=r"\[0, 500\)"):
        embedder.add_embedding_request("vocab", [1, VOCAB])
    with pytest.raises(InvalidRequestError, match="empty"):
        embedder.add_embedding_request("empty", [])
    # Aborted midway (a chunk computed): it ends without a vector, its blocks freed.
    embedder.add_embedding_request("x", list(range(90)))
    embedder.step()
    out = embedder.abort("x")
    assert out is not None and out.finished and out.embedding is None and not embedder.has_unfinished_requests()
    assert embedder.load().num_free_blocks == embedder.load().num_blocks
    generator = LLMEngine(str(causal), EngineConfig(block_size=8, kv_cache_bytes=8 * 1024 * 1024))
    with pytest.raises(InvalidRequestError, match="--task embed"):
        generator.add_embedding_request("e", [1, 2, 3])


@pytest.mark.parametrize("config,want", [
    ({"matryoshka_dimensions": [1024, 32, 256]}, (32, 256, 1024)),
    ({"is_matryoshka": True}, ()),
    ({"is_matryoshka": False}, None),
    ({}, None),
    ({"matryoshka_dimensions": []}, None),
])
def test_a_folder_says_which_shorter_sizes_its_embeddings_take(tmp_path: Path, config: dict, want) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert folder_matryoshka(str(tmp_path)) == want
    assert folder_matryoshka(str(tmp_path / "model.gguf")) is None


def test_shorten_keeps_the_first_values_normalised() -> None:
    assert shorten([0.6, 0.0, 0.8], 1) == [1.0]
    assert shorten([3.0, 4.0, 12.0], 2) == pytest.approx([0.6, 0.8])
