"""BERT-style encoders as embedding models (XLMRobertaModel, as IBM's granite-embedding; BertModel): each
prompt computed whole (never split across steps, however small the token budget), attended both ways,
pooled from the first position (or as the folder's 1_Pooling says); vectors equal transformers'. And the
errors: a generate engine, unsupported configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.loader.errors import ModelLoadError
from engine.loader.hf_loader import config_from_hf, load_hf_folder
from tests.engine.tiny_folders import write_word_tokenizer

VOCAB = 300


@pytest.fixture(scope="module", params=["xlm_roberta", "bert"])
def tiny_encoder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                  max_position_embeddings=66, type_vocab_size=2, initializer_range=0.2)
    if request.param == "xlm_roberta":  # positions from pad_token_id + 1 = 2: 64 of them
        model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig(**common, pad_token_id=1))
    else:
        model = transformers.BertModel(transformers.BertConfig(**common))
    model.eval()
    with torch.no_grad():  # LayerNorms start at 1 and 0: random ones test them
        for name, tensor in model.named_parameters():
            if "LayerNorm" in name:
                tensor.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    write_word_tokenizer(folder, VOCAB)
    return request.param, folder, model


def _engine(folder: Path, **overrides: object) -> LLMEngine:
    # A budget of 16 tokens: prompts up to 40 long must still be computed whole (the engine raises it).
    config = EngineConfig(**({"task": "embed", "dtype": torch.float32, "block_size": 8, "kv_cache_bytes": 2 * 2**20,
                              "max_num_batched_tokens": 16} | overrides))  # type: ignore[arg-type]
    return LLMEngine(str(folder), config)


def _want(model: torch.nn.Module, prompt: list[int], pooling: str) -> torch.Tensor:
    with torch.inference_mode():
        hidden = model(torch.tensor([prompt])).last_hidden_state[0]
    vector = hidden[0] if pooling == "cls" else hidden.mean(dim=0)
    return torch.nn.functional.normalize(vector, dim=0)


@pytest.mark.parametrize("pooling", [None, "mean"])
def test_vectors_match_transformers_with_each_prompt_whole(tiny_encoder, pooling: str | None) -> None:
    arch, folder, model = tiny_encoder
    engine = _engine(folder, pooling=pooling)
    assert (engine.pooling, engine.model_config.architecture) == (pooling or "cls", arch)
    assert engine.runner.kv_cache.device.type == "meta"  # no cache memory
    gen = torch.Generator().manual_seed(1)
    prompts = {f"r{n}": torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in (40, 7, 23, 64)}
    for request_id, prompt in prompts.items():
        engine.add_embedding_request(request_id, prompt)
    outputs, steps = {}, []
    while engine.has_unfinished_requests():
        outputs |= {o.request_id: o for o in engine.step()}
        steps.append(sorted(outputs))
    for request_id, prompt in prompts.items():
        got = torch.tensor(outputs[request_id].embedding)
        torch.testing.assert_close(got, _want(model, prompt, pooling or "cls"), atol=1e-5, rtol=1e-5)
    assert len(steps) >= 2  # 134 tokens do not fit one step of 64 (the longest prompt)
    load = engine.load()
    assert load.num_free_blocks == load.num_blocks


def _embed(engine: LLMEngine, prompts: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    for request_id, prompt in prompts.items():
        engine.add_embedding_request(request_id, prompt)
    outputs: dict[str, torch.Tensor] = {}
    while engine.has_unfinished_requests():
        outputs |= {o.request_id: torch.tensor(o.embedding) for o in engine.step()}
    return outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_prompts_vector_does_not_depend_on_its_step(tiny_encoder, dtype: torch.dtype) -> None:
    """Prompts of one length side by side in a step are attended in one call, the linears run on the
    whole step (the packed C++ kernel in bf16): each vector is the bits of its prompt embedded alone, and
    near transformers' (in bf16, within bf16's rounding)."""
    _, folder, model = tiny_encoder
    gen = torch.Generator().manual_seed(3)
    prompts = {f"r{i}": torch.randint(3, VOCAB, (n,), generator=gen).tolist() for i, n in enumerate((16, 16, 16, 9, 16))}
    engine = _engine(folder, dtype=dtype, max_num_batched_tokens=128)  # all five in one step
    together = _embed(engine, prompts)
    for request_id, prompt in prompts.items():
        alone = _embed(engine, {request_id + "-alone": prompt})[request_id + "-alone"]
        assert torch.equal(together[request_id], alone), request_id
        tolerance = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(together[request_id], _want(model, prompt, "cls"), atol=tolerance, rtol=tolerance)


def test_a_prompt_past_the_position_table_is_refused(tiny_encoder) -> None:
    from engine.errors import PromptTooLongError

    arch, folder, _ = tiny_encoder
    engine = _engine(folder)
    positions = 64 if arch == "xlm_roberta" else 66  # RoBERTa's table starts at pad_token_id + 1 = 2
    assert engine.max_model_len == positions
    engine.add_embedding_request("full", list(range(3, 3 + positions)))  # an embedding may fill the context
    with pytest.raises(PromptTooLongError):
        engine.add_embedding_request("long", list(range(3, 4 + positions)))


def test_an_encoder_serves_embeddings_only(tiny_encoder) -> None:
    _, folder, _ = tiny_encoder
    with pytest.raises(ModelLoadError, match="embeddings only"):
        LLMEngine(str(folder), EngineConfig(dtype=torch.float32, kv_cache_bytes=2 * 2**20))


def test_the_folders_weights_load_under_their_own_names(tiny_encoder, tmp_path: Path) -> None:
    """A checkpoint saved from a task head ("roberta." / "bert." prefix, a pooler) loads the same."""
    from safetensors.torch import load_file, save_file

    arch, folder, _ = tiny_encoder
    config, weights = load_hf_folder(str(folder), torch.float32)
    prefix = "roberta." if arch == "xlm_roberta" else "bert."
    tensors = load_file(folder / "model.safetensors")
    save_file({prefix + name: t for name, t in tensors.items()} | {"pooler.dense.weight": torch.zeros(64, 64)},
              tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    again_config, again = load_hf_folder(str(tmp_path), torch.float32)
    assert again_config == config and again.keys() == weights.keys()


@pytest.mark.parametrize("overrides,why", [
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"is_decoder": True}, "encoders only"),
])
def test_encoder_configs_the_model_does_not_run_are_refused(overrides: dict, why: str) -> None:
    raw = {"architectures": ["XLMRobertaModel"], "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96,
           "num_hidden_layers": 2, "vocab_size": 300, "max_position_embeddings": 66, "pad_token_id": 1}
    assert config_from_hf(raw, "m").max_position_embeddings == 64
    with pytest.raises(ModelLoadError, match=why):
        config_from_hf(raw | overrides, "m")


def test_sentence_transformers_cls_pooling_is_read(tmp_path: Path) -> None:
    from engine.pooling import folder_pooling

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert folder_pooling(str(tmp_path)) == "cls"
