"""Dequantization of GGML tensor data into float32 torch tensors.

The common block formats are decoded with vectorized, multi-threaded torch ops (about twice as fast
as gguf-py's numpy decoder on SmolLM2); every other format gguf-py knows falls back to
`gguf.quants.dequantize`.
The torch decoders perform the same float32 operations in the same order as gguf-py's, so their
results are bit-identical to it.
"""
from __future__ import annotations

from typing import Callable

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType

_NIBBLE_SHIFTS = torch.tensor([0, 4], dtype=torch.uint8)
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)
_CRUMB_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


class UnsupportedQuantError(NotImplementedError):
    """gguf-py has no decoder for this tensor type."""


def dequantize(data: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode `data` (a GGUFReader tensor's raw array) into a float32 tensor of torch `shape`."""
    # np.array copies: the reader's arrays are read-only views of the memory-mapped file.
    if qtype == GGMLQuantizationType.F32:
        return torch.from_numpy(np.array(data, dtype=np.float32)).reshape(shape)
    if qtype == GGMLQuantizationType.F16:
        return torch.from_numpy(np.array(data, dtype=np.float16)).reshape(shape).float()
    if qtype == GGMLQuantizationType.BF16:
        return _bytes(data).view(torch.bfloat16).reshape(shape).float()
    decoder = _DECODERS.get(qtype)
    if decoder is not None:
        _, type_size = GGML_QUANT_SIZES[qtype]
        return decoder(_bytes(data).reshape(-1, type_size)).reshape(shape)
    try:
        out = gguf.quants.dequantize(np.asarray(data), qtype)
    except NotImplementedError as e:
        raise UnsupportedQuantError(f"no decoder for GGML type {qtype.name}") from e
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(shape)


def _bytes(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(data, copy=True).view(np.uint8).reshape(-1))


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """(n_blocks, 2) bytes -> (n_blocks, 1) float32."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n_blocks, g, k) packed bytes -> (n_blocks, g, 2k): low nibbles first, then high."""
    split = (qs.unsqueeze(-2) >> _NIBBLE_SHIFTS.view(2, 1)).bitwise_and_(0x0F)
    return split.reshape(*qs.shape[:-1], 2 * qs.shape[-1])


def _bits(qh: torch.Tensor) -> torch.Tensor:
    """(n_blocks, k) bytes -> (n_blocks, 8k) bits, little-endian bit order."""
    return (qh.unsqueeze(-1) >> _BIT_SHIFTS).bitwise_and_(1).reshape(qh.shape[0], -1)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    # block (34 B): d f16 | 32 x int8
    return b[:, 2:].view(torch.int8).float().mul_(_f16(b[:, :2]))


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    # block (18 B): d f16 | 16 B of nibbles
    q = _nibbles(b[:, 2:]).view(torch.int8).sub_(8)
    return q.float().mul_(_f16(b[:, :2]))


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    # block (20 B): d f16 | m f16 | 16 B of nibbles
    return _nibbles(b[:, 4:]).float().mul_(_f16(b[:, :2])).add_(_f16(b[:, 2:4]))


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    # block (22 B): d f16 | 32 high bits | 16 B of low nibbles
    q = _nibbles(b[:, 6:]).bitwise_or_(_bits(b[:, 2:6]) << 4).view(torch.int8).sub_(16)
    return q.float().mul_(_f16(b[:, :2]))


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    # block (24 B): d f16 | m f16 | 32 high bits | 16 B of low nibbles
    q = _nibbles(b[:, 8:]).bitwise_or_(_bits(b[:, 4:8]) << 4)
    return q.float().mul_(_f16(b[:, :2])).add_(_f16(b[:, 2:4]))


def _k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_blocks, 12) packed 6-bit values -> eight sub-block scales and eight mins, (n_blocks, 8) each."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _k_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Apply Q4_K/Q5_K super-block scales to q of shape (n_blocks, 8, 32)."""
    sc, mn = _k_scales_mins(b[:, 4:16])
    d = (_f16(b[:, :2]) * sc.float()).unsqueeze(-1)
    dm = (_f16(b[:, 2:4]) * mn.float()).unsqueeze(-1)
    return q.float().mul_(d).sub_(dm).reshape(-1, QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    # block (144 B): d f16 | dmin f16 | 12 B scales | 128 B nibbles in 4 groups of 32 bytes
    q = _nibbles(b[:, 16:].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    return _k_affine(b, q)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # block (176 B): d f16 | dmin f16 | 12 B scales | 32 B high bits | 128 B low nibbles
    ql = _nibbles(b[:, 48:].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    # bit j of high byte i belongs to element i of sub-block j
    qh = (b[:, 16:48].unsqueeze(1) >> _BIT_SHIFTS.view(8, 1)).bitwise_and_(1)
    return _k_affine(b, ql.bitwise_or_(qh << 4))


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # block (210 B): 128 B low nibbles | 64 B high 2-bit pairs | 16 x int8 scales | d f16
    ql = _nibbles(b[:, :128].reshape(-1, 2, 64)).reshape(-1, 8, 32)
    qh = (b[:, 128:192].reshape(-1, 2, 1, 32) >> _CRUMB_SHIFTS.view(4, 1)).bitwise_and_(0x03)
    q = ql.bitwise_or_(qh.reshape(-1, 8, 32) << 4).view(torch.int8).sub_(32)
    d = (_f16(b[:, 208:210]) * b[:, 192:208].view(torch.int8).float()).unsqueeze(-1)
    return q.reshape(-1, 16, 16).float().mul_(d).reshape(-1, QK_K)


_DECODERS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLQuantizationType.Q8_0: _q8_0,
    GGMLQuantizationType.Q4_0: _q4_0,
    GGMLQuantizationType.Q4_1: _q4_1,
    GGMLQuantizationType.Q5_0: _q5_0,
    GGMLQuantizationType.Q5_1: _q5_1,
    GGMLQuantizationType.Q4_K: _q4_k,
    GGMLQuantizationType.Q5_K: _q5_k,
    GGMLQuantizationType.Q6_K: _q6_k,
}
