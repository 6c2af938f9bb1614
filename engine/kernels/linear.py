"""bf16 linear layer y = x @ W^T on CPU, through the C++ kernel of csrc/cpu/linear_bf16.cpp.

torch's bf16 CPU linear is far from what the hardware allows for the small
matrices of a small model: a decode step (M = 1) must stream each weight once at
memory bandwidth, a batch of decodes must keep vdpbf16ps busy. The kernel needs
the weight in its own tiled layout, so a model packs each weight once at load
time (`pack`) and calls `linear` with the packed form:

    packed = pack(weight)                                   # (N, K) bf16
    y = linear(x, packed)                                   # (..., K) bf16 -> (..., N) bf16
    logits = linear(h, lm_head, out_dtype=torch.float32)    # fp32 output, same accumulation

Products are accumulated in fp32; a bf16 output is rounded to nearest even.
`reference` states the semantics (accumulation order aside). The kernel takes
raw pointers, so this module checks shapes and dtypes and keeps every tensor
alive for the duration of the call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kernels import weight_arena

try:
    from engine import _C
except ImportError:  # not built: supported() is False
    _C = None

_SUPPORTED = _C is not None and hasattr(_C, "linear_bf16")
# Output dtypes, with the extension's name for each (looked up here, not per call:
# decode makes a hundred calls per token, each of a few microseconds).
_OUT_DTYPES = {torch.bfloat16: _C.DType.bfloat16, torch.float32: _C.DType.float32} if _SUPPORTED else {}


def supported() -> bool:
    """Whether the extension is built with the linear kernel."""
    return _SUPPORTED


@dataclass(frozen=True)
class PackedLinearWeight:
    """A weight (out_features, in_features) in the kernel's layout.

    data is (ceil(N / 32), ceil(K / 2), 32, 2) bf16: tiles of 32 output
    features, each a sequence of (k, k+1) pairs, zero-padded past N and K.
    """

    data: torch.Tensor
    out_features: int  # N
    in_features: int  # K

    def __post_init__(self) -> None:
        # The kernel trusts data to cover N x K: checked once here, not per call.
        n, k = self.out_features, self.in_features
        shape = _packed_shape(n, k)
        if (tuple(self.data.shape) != shape or self.data.dtype != torch.bfloat16 or not self.data.is_cpu
                or not self.data.is_contiguous()):
            raise ValueError(f"packed data for ({n}, {k}) must be a contiguous bfloat16 CPU tensor {shape}, got "
                             f"{tuple(self.data.shape)} {self.data.dtype}")


def pack(weight: torch.Tensor) -> PackedLinearWeight:
    """Packs a bf16 CPU weight (N, K), as nn.Linear stores it, for `linear`."""
    _require_supported()
    if weight.dim() != 2 or weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
        raise ValueError(f"pack expects a 2-D bfloat16 CPU weight, got {tuple(weight.shape)} {weight.dtype} "
                         f"on {weight.device}")
    n, k = weight.shape
    if n == 0 or k == 0:
        raise ValueError(f"pack expects a non-empty weight, got {tuple(weight.shape)}")
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    data = weight_arena.empty(_packed_shape(n, k), torch.bfloat16)  # 2 MB pages: see weight_arena.py
    _C.pack_linear_weight(
        weight=weight.data_ptr(),
        packed=data.data_ptr(),
        n=n,
        k=k,
        weight_row_stride=weight.stride(0) if n > 1 else k,
        num_threads=torch.get_num_threads(),
    )
    return PackedLinearWeight(data, n, k)


def linear(x: torch.Tensor, packed: PackedLinearWeight, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x @ W^T for x (..., K) bf16 on CPU; returns (..., N) in out_dtype (bf16 by default, or fp32)."""
    _require_supported()
    dtype_enum = _OUT_DTYPES.get(out_dtype or torch.bfloat16)
    if dtype_enum is None:
        raise ValueError(f"out_dtype must be torch.bfloat16 or torch.float32, got {out_dtype}")
    if x.dtype != torch.bfloat16 or not x.is_cpu:
        raise ValueError(f"linear expects a bfloat16 CPU input, got {x.dtype} on {x.device}")
    n, k = packed.out_features, packed.in_features
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"x must be (..., {k}), got {tuple(x.shape)}")
    rows = x if x.dim() == 2 else x.reshape(-1, k)  # a view where strides allow
    m = rows.shape[0]
    if rows.stride(1) != 1 or (m > 1 and rows.stride(0) < k):  # the kernel wants whole, disjoint rows
        rows = rows.contiguous()
    out = torch.empty(m, n, dtype=out_dtype or torch.bfloat16)
    if m > 0:
        _C.linear_bf16(
            out=out.data_ptr(),
            x=rows.data_ptr(),
            packed=packed.data.data_ptr(),
            out_dtype=dtype_enum,
            m=m,
            n=n,
            k=k,
            x_row_stride=rows.stride(0) if m > 1 else k,
            out_row_stride=n,
            num_threads=torch.get_num_threads(),
        )
    return out if x.dim() == 2 else out.view(*x.shape[:-1], n)


def reference(x: torch.Tensor, weight: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The semantics of `linear` on an unpacked weight: bf16 products summed in fp32."""
    return (x.float() @ weight.float().T).to(out_dtype or x.dtype)


def _packed_shape(n: int, k: int) -> tuple[int, int, int, int]:
    _require_supported()
    tile = _C.LINEAR_TILE_N
    return (-(-n // tile), -(-k // 2), tile, 2)


def _require_supported() -> None:
    if not _SUPPORTED:
        raise RuntimeError("engine._C lacks the linear kernel: build it with `python setup.py build_ext --inplace`")
