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

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.kernels import weight_arena

try:
    from engine import _C
except ImportError:  # not built: supported() is False
    _C = None

_SUPPORTED = _C is not None and hasattr(_C, "linear_bf16") and hasattr(_C, "linear_bf16_grouped")
Q4_1_BLOCK, Q4_1_BYTES = 32, 20  # weights and bytes of a GGUF Q4_1 block
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
    # The same weight from its GGUF Q4_1 blocks, (packed_q4_1_bytes,) uint8, or None: decode
    # batches of up to Q4_1_MAX_ROWS rows read it instead (3.2x fewer bytes, the same bits).
    q4_1: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # The kernel trusts data to cover N x K: checked once here, not per call.
        n, k = self.out_features, self.in_features
        shape = _packed_shape(n, k)
        if (tuple(self.data.shape) != shape or self.data.dtype != torch.bfloat16 or not self.data.is_cpu
                or not self.data.is_contiguous()):
            raise ValueError(f"packed data for ({n}, {k}) must be a contiguous bfloat16 CPU tensor {shape}, got "
                             f"{tuple(self.data.shape)} {self.data.dtype}")
        q4 = self.q4_1
        if q4 is not None and (k % Q4_1_BLOCK or q4.dtype != torch.uint8 or not q4.is_cpu or not q4.is_contiguous()
                               or tuple(q4.shape) != (_C.packed_q4_1_bytes(n=n, k=k),)):
            raise ValueError(f"packed Q4_1 data for ({n}, {k}) must be a contiguous uint8 CPU tensor of "
                             f"{_C.packed_q4_1_bytes(n=n, k=k) if k % Q4_1_BLOCK == 0 else '?'} bytes")


def q4_1_supported() -> bool:
    """Whether `linear` runs Q4_1 forms on this CPU (the amx_bf16 or avx512_bf16 variant is selected)."""
    return _SUPPORTED and _C.linear_q4_1_available()


def pack(weight: torch.Tensor, q4_1_blocks: torch.Tensor | None = None) -> PackedLinearWeight:
    """Packs a bf16 CPU weight (N, K), as nn.Linear stores it, for `linear`.

    q4_1_blocks: the same weight as a GGUF file stores it in Q4_1, (N, K / 32 * 20) uint8 in the
    weight's row order, whose dequantization rounded to bf16 is `weight`; it is packed too, for
    `linear` to read at small batches. The caller vouches for that equality (the loader derives
    both from the same bytes); the kernel's outputs then do not depend on which form it reads.
    """
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
    return PackedLinearWeight(data, n, k, None if q4_1_blocks is None else _pack_q4_1(q4_1_blocks, n, k))


def _pack_q4_1(blocks: torch.Tensor, n: int, k: int) -> torch.Tensor:
    if k % Q4_1_BLOCK or blocks.dtype != torch.uint8 or tuple(blocks.shape) != (n, k // Q4_1_BLOCK * Q4_1_BYTES):
        raise ValueError(f"Q4_1 blocks of a ({n}, {k}) weight must be uint8 ({n}, {k // Q4_1_BLOCK * Q4_1_BYTES}) "
                         f"with K a multiple of {Q4_1_BLOCK}, got {tuple(blocks.shape)} {blocks.dtype}")
    blocks = blocks.cpu().contiguous()
    data = weight_arena.empty((_C.packed_q4_1_bytes(n=n, k=k),), torch.uint8)
    _C.pack_linear_weight_q4_1(blocks=blocks.data_ptr(), packed=data.data_ptr(), n=n, k=k,
                               num_threads=torch.get_num_threads())
    return data


def linear(x: torch.Tensor, packed: PackedLinearWeight, out_dtype: torch.dtype | None = None,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W^T (+ bias) for x (..., K) bf16 on CPU; returns (..., N) in out_dtype (bf16 by default, or fp32).
    bias (N,): added in fp32 to the fp32 sums, before a bf16 output is rounded (once), as torch's biased
    linear does."""
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
    if bias is not None:
        if bias.shape != (n,) or not bias.is_cpu:
            raise ValueError(f"bias must be a CPU tensor ({n},), got {tuple(bias.shape)} on {bias.device}")
        bias = bias.to(torch.float32).contiguous()
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
            packed_q4_1=0 if packed.q4_1 is None else packed.q4_1.data_ptr(),
            bias=0 if bias is None else bias.data_ptr(),
        )
    return out if x.dim() == 2 else out.view(*x.shape[:-1], n)


def grouped_linear(x: torch.Tensor, packed: Sequence[PackedLinearWeight], row_starts: Sequence[int],
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x (M, K) bf16 whose rows row_starts[g]:row_starts[g + 1] go through packed[g] (all (N, K)) -> (M, N)
    in out_dtype: a mixture of experts' layer, its tokens sorted by expert, in one call. Each row's
    output is the bits `linear` gives it alone."""
    _require_supported()
    dtype_enum = _OUT_DTYPES.get(out_dtype or torch.bfloat16)
    if dtype_enum is None:
        raise ValueError(f"out_dtype must be torch.bfloat16 or torch.float32, got {out_dtype}")
    if not packed or len(row_starts) != len(packed) + 1:
        raise ValueError("grouped_linear needs one weight per group and one row start more than weights")
    n, k = packed[0].out_features, packed[0].in_features
    if any((p.out_features, p.in_features) != (n, k) for p in packed):
        raise ValueError("grouped_linear: every weight must have the same shape")
    if x.dtype != torch.bfloat16 or not x.is_cpu or x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be a bfloat16 CPU (M, {k}), got {x.dtype} {tuple(x.shape)} on {x.device}")
    if row_starts[0] != 0 or row_starts[-1] != x.shape[0] or any(a > b for a, b in zip(row_starts, row_starts[1:])):
        raise ValueError(f"row_starts must rise from 0 to {x.shape[0]}, got {list(row_starts)}")
    x = x.contiguous()
    out = torch.empty(x.shape[0], n, dtype=out_dtype or torch.bfloat16)
    _C.linear_bf16_grouped(out=out.data_ptr(), x=x.data_ptr(), packed=[p.data.data_ptr() for p in packed],
                           row_starts=list(row_starts), out_dtype=dtype_enum, n=n, k=k, x_row_stride=k,
                           out_row_stride=n, num_threads=torch.get_num_threads())
    return out


def gather_rows(packed: PackedLinearWeight, ids: torch.Tensor) -> torch.Tensor:
    """W[ids] for ids (...) int64 on CPU: (..., K) bf16 rows of the packed weight (a tied model's
    embeddings, kept only in its output projection's packed form). ValueError for an id out of range."""
    _require_supported()
    flat = ids.reshape(-1)
    if flat.dtype != torch.int64 or not flat.is_cpu or not flat.is_contiguous():
        flat = flat.to(device="cpu", dtype=torch.int64).contiguous()
    k = packed.in_features
    out = torch.empty(flat.shape[0], k, dtype=torch.bfloat16)
    _C.gather_packed_rows(out=out.data_ptr(), packed=packed.data.data_ptr(), n=packed.out_features, k=k,
                          ids=flat.data_ptr(), count=flat.shape[0], out_row_stride=k)
    return out.view(*ids.shape, k)


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
