"""The attention metadata of the forward pass in flight, set around each forward pass so that
models keep the plain signature forward(input_ids, positions)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (num_tokens,) int64: cache slot of each new token
    block_tables: torch.Tensor  # (num_seqs, max_blocks_per_seq) int32
    context_lens: torch.Tensor  # (num_seqs,) int32: tokens in the cache after this step
    query_start_loc: torch.Tensor  # (num_seqs + 1,) int32: cumulative query lengths
    max_query_len: int
    max_context_len: int


_current: AttentionMetadata | None = None


@contextmanager
def forward_context(metadata: AttentionMetadata) -> Iterator[None]:
    global _current
    assert _current is None, "nested forward passes"
    _current = metadata
    try:
        yield
    finally:
        _current = None


def get_attention_metadata() -> AttentionMetadata:
    assert _current is not None, "attention called outside a forward pass"
    return _current
