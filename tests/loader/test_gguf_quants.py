"""The torch dequantizers against gguf-py's numpy reference, on random valid blocks."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from engine.loader.gguf_quants import UnsupportedQuantError, dequantize
from tests.loader.helpers import F16_FIELDS, random_blocks

ROWS = 6


@pytest.mark.parametrize("qtype", list(F16_FIELDS), ids=lambda q: q.name)
def test_block_formats_match_gguf_py_bit_for_bit(qtype: Q) -> None:
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    blocks_per_row = 1024 // block_size
    rng = np.random.default_rng(int(qtype))
    raw = random_blocks(rng, ROWS * blocks_per_row, qtype).reshape(ROWS, -1)

    ours = dequantize(raw, qtype, (ROWS, blocks_per_row * block_size))

    reference = torch.from_numpy(gguf.quants.dequantize(raw, qtype).copy())
    assert ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16], ids=lambda q: q.name)
def test_float_formats_match_gguf_py(qtype: Q) -> None:
    values = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    stored = gguf.quants.quantize(values, qtype)  # F32/F16 as such, BF16 as raw bytes

    ours = dequantize(stored, qtype, (3, 40))

    assert torch.equal(ours, torch.from_numpy(gguf.quants.dequantize(stored, qtype).reshape(3, 40).copy()))


def test_types_gguf_py_cannot_decode_are_reported() -> None:
    with pytest.raises(UnsupportedQuantError, match="Q8_1"):
        dequantize(np.zeros((1, 40), dtype=np.uint8), Q.Q8_1, (1, 32))
