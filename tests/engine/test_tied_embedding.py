"""A tied model on the CPU kernels keeps its embeddings only in the packed output projection."""
from __future__ import annotations

import pytest
import torch

from engine import LLM
from engine.kernels import linear
from engine.loader.gguf_loader import load_gguf

pytestmark = pytest.mark.skipif(not linear.supported(), reason="engine._C not built with the linear kernel")


def test_embeddings_come_from_the_packed_output_projection(smollm2_gguf: str) -> None:
    llm = LLM(smollm2_gguf, dtype=torch.bfloat16, kv_cache_bytes=16 * 2**20)
    model = llm.engine.runner.model
    assert model.config.tie_word_embeddings
    assert model.embed_tokens.weight is None and model.lm_head.packed is not None
    _, weights, _ = load_gguf(smollm2_gguf, torch.bfloat16)
    ids = torch.tensor([0, 1, 2, 17, 4096, model.config.vocab_size - 1])
    assert torch.equal(model._embed(ids), weights["model.embed_tokens.weight"][ids])
