"""Fixtures: a tiny random Hugging Face Llama and its llama.cpp-style GGUF conversion."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.loader.helpers import tiny_llama_config, write_llama_gguf


@dataclass(frozen=True)
class TinyLlama:
    folder: Path  # save_pretrained output, one safetensors file
    hf_config: LlamaConfig
    state_dict: dict[str, torch.Tensor]  # float32
    inv_freq: torch.Tensor  # HF's llama3-scaled rotary frequencies, (head_dim // 2,)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyLlama:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    # HF initializes norms to ones; randomize them so a swapped norm would be caught.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TinyLlama(folder, model.config, state, model.model.rotary_emb.inv_freq.clone())


@pytest.fixture(scope="session")
def tiny_llama_gguf(tiny_llama: TinyLlama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf"
    write_llama_gguf(path, tiny_llama.hf_config, tiny_llama.state_dict)
    return path
