"""Sampling on CPU through csrc/cpu/sampling.cpp: one token per row from fp32 logits, at random
(temperature, top-k, top-p and min-p, drawn at given uniform variates) or greedily (argmax_rows).

engine/sampler.py uses it for CPU logits in place of its torch path (torch's CPU topk, sort and
logsumexp cost ~7 ms per batch-32 step over a 49k vocabulary; this costs well under one). The
same kept tokens and distribution as that path; kept tokens are walked in descending order, so
for a given uniform the token may differ from the torch path's.
"""
from __future__ import annotations

import torch

try:
    from engine import _C
except ImportError:  # not built: supported() is False
    _C = None

_SUPPORTED = _C is not None and hasattr(_C, "sample_rows") and hasattr(_C, "argmax_rows")


def supported() -> bool:
    return _SUPPORTED


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor | None,
                top_p: torch.Tensor | None, min_p: torch.Tensor | None, uniforms: torch.Tensor) -> torch.Tensor:
    """(S,) int64 token ids. logits: (S, V) float32 on CPU, rows contiguous; temperature (S,) > 0;
    top_k (S,) int64 (>= V: off), top_p (S,) float32 (1: off), min_p (S,) float32 (0: off), each
    None when no row uses it; uniforms (S,) in [0, 1)."""
    assert _C is not None
    rows, vocab = logits.shape
    if logits.dtype != torch.float32 or logits.device.type != "cpu" or logits.stride(1) != 1:
        raise ValueError("sample_rows: logits must be float32 CPU rows of contiguous elements")
    temperature = temperature.to(torch.float32).contiguous()
    uniforms = uniforms.to(torch.float64).contiguous()
    top_k = top_k.to(torch.int64).contiguous() if top_k is not None else None
    top_p = top_p.to(torch.float32).contiguous() if top_p is not None else None
    min_p = min_p.to(torch.float32).contiguous() if min_p is not None else None
    for t in (temperature, uniforms, top_k, top_p, min_p):
        if t is not None and t.shape != (rows,):
            raise ValueError("sample_rows: one value per row expected")
    out = torch.empty(rows, dtype=torch.int64)
    _C.sample_rows(logits=logits.data_ptr(), rows=rows, vocab=vocab, row_stride=logits.stride(0),
                   temperature=temperature.data_ptr(), top_k=top_k.data_ptr() if top_k is not None else 0,
                   top_p=top_p.data_ptr() if top_p is not None else 0,
                   min_p=min_p.data_ptr() if min_p is not None else 0, uniforms=uniforms.data_ptr(),
                   out=out.data_ptr(), num_threads=torch.get_num_threads())
    return out


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """(S,) int64: each row's first index of its largest value, NaN the largest, as torch.argmax
    (whose CPU kernel took ~0.65 ms a batch-32 step). logits: (S, V) float32 on CPU, rows of
    contiguous elements."""
    assert _C is not None
    rows, vocab = logits.shape
    if logits.dtype != torch.float32 or logits.device.type != "cpu" or logits.stride(1) != 1:
        raise ValueError("argmax_rows: logits must be float32 CPU rows of contiguous elements")
    out = torch.empty(rows, dtype=torch.int64)
    if rows:
        _C.argmax_rows(logits=logits.data_ptr(), rows=rows, vocab=vocab, row_stride=logits.stride(0),
                       out=out.data_ptr(), num_threads=torch.get_num_threads())
    return out
