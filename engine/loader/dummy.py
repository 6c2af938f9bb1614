"""Random weights of a model's exact shapes, made on the target device (vLLM's `--load-format dummy`).

For speed measurements only: a Llama-3.1-8B checkpoint is 16 GB to write and read back, which costs
more than the measurement; matrices ~ N(0, std) and norms at 1 keep bf16 activations finite, so the
kernels do the same work they do on real weights (never zeros: they can run faster than real data)."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.loader.hf_loader import config_from_hf, generation_eos, read_json
from engine.loader.llama_layout import expected_shapes

DUMMY_STD = 0.02


def load_dummy_config(folder: str) -> ModelConfig:
    """The ModelConfig of a Hugging Face folder's config.json (no weights are read)."""
    path = Path(folder)
    return config_from_hf(read_json(path / "config.json"), folder, generation_eos(path))


def dummy_weights(config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                  seed: int = 0, std: float = DUMMY_STD, lm_head: bool = True) -> dict[str, torch.Tensor]:
    """Hugging Face-named tensors of every parameter `config` needs (the output projection only with
    lm_head), already on `device` in `dtype`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(config, lm_head).items():
        if len(shape) == 1 and not name.endswith(".bias"):  # RMSNorm gains
            weights[name] = torch.ones(shape, dtype=dtype, device=device)
        else:
            weights[name] = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std, generator=generator)
    return weights
