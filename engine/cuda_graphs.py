"""CUDA graphs for decode steps: one graph per captured batch size, replayed with static inputs.

A decode step of a small model is a few hundred short kernel launches; launching them from Python
costs more than running them. Each graph is captured once per batch size in `capture_sizes`
(1, 2, 4, 8, then every 8 up to max_num_seqs) over static device buffers (token ids, positions,
slots, block tables, context lengths); a decode batch of n sequences is padded to the smallest
captured size >= n. Padding rows carry slot -1 (the Triton and CUDA cache writes skip them) and
context length 1 over block 0, so they compute finite garbage that nobody reads. The attention
grid is planned from max_model_len (a host-side bound), which the captured kernels tolerate:
splits past a sequence's context drop out. Only on CUDA, and only with the triton or cuda attention
backend (the torch reference would write slot -1 into the cache).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.forward_context import AttentionMetadata, forward_context


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, ... up to max_num_seqs (always included)."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs] + list(range(8, max_num_seqs, 8)) + [max_num_seqs]
    return sorted(set(sizes))


def padded_size(sizes: list[int], n: int) -> int | None:
    """The smallest captured size that holds n sequences, or None (run eagerly)."""
    return next((s for s in sizes if s >= n), None)


@dataclass(slots=True)
class DecodeInputs:
    """Static device buffers every graph reads; rows beyond the live batch are padding."""

    input_ids: torch.Tensor  # (max_bs,) int64
    positions: torch.Tensor  # (max_bs,) int64
    slot_mapping: torch.Tensor  # (max_bs,) int64
    block_tables: torch.Tensor  # (max_bs, max_blocks_per_seq) int32
    context_lens: torch.Tensor  # (max_bs,) int32
    query_start_loc: torch.Tensor  # (max_bs + 1,) int32: 0..max_bs, one token per sequence

    @classmethod
    def allocate(cls, max_bs: int, max_blocks_per_seq: int, device: torch.device) -> DecodeInputs:
        def zeros(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(zeros(max_bs, dtype=torch.int64), zeros(max_bs, dtype=torch.int64),
                   torch.full((max_bs,), -1, dtype=torch.int64, device=device),
                   zeros(max_bs, max_blocks_per_seq, dtype=torch.int32), torch.ones(max_bs, dtype=torch.int32,
                                                                                   device=device),
                   torch.arange(max_bs + 1, dtype=torch.int32, device=device))

    def metadata(self, bs: int, max_context_len: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:bs], self.block_tables[:bs], self.context_lens[:bs],
                                 self.query_start_loc[:bs + 1], max_query_len=1, max_context_len=max_context_len)


@dataclass(slots=True)
class DecodeGraphs:
    """Captured decode graphs of one model; replay() runs a padded batch and returns its hidden states."""

    inputs: DecodeInputs
    max_context_len: int
    graphs: dict[int, torch.cuda.CUDAGraph] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # (bs, hidden) per captured size

    @property
    def sizes(self) -> list[int]:
        return sorted(self.graphs)

    @classmethod
    @torch.no_grad()
    def capture(cls, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sizes: list[int],
                max_blocks_per_seq: int, max_context_len: int, device: torch.device) -> DecodeGraphs:
        """Captures the largest size first so the smaller graphs reuse its memory pool."""
        self = cls(DecodeInputs.allocate(max(sizes), max_blocks_per_seq, device), max_context_len)
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(device)
        for bs in sorted(sizes, reverse=True):
            meta = self.inputs.metadata(bs, max_context_len)
            ids, pos = self.inputs.input_ids[:bs], self.inputs.positions[:bs]
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream), forward_context(meta):
                forward(ids, pos)  # warm-up outside the graph: Triton compiles, cuBLAS picks kernels
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool), forward_context(meta):
                self.outputs[bs] = forward(ids, pos)
            self.graphs[bs] = graph
        torch.cuda.synchronize(device)
        return self

    def fits(self, num_seqs: int, max_context_len: int, table_width: int) -> bool:
        return (padded_size(self.sizes, num_seqs) is not None and max_context_len <= self.max_context_len
                and table_width <= self.inputs.block_tables.shape[1])

    def replay(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
               block_tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
        """Inputs are (pinned) host tensors of the live batch, n rows; returns (n, hidden) on the device."""
        n = input_ids.shape[0]
        bs = padded_size(self.sizes, n)
        assert bs is not None
        x = self.inputs
        x.input_ids[:n].copy_(input_ids, non_blocking=True)
        x.positions[:n].copy_(positions, non_blocking=True)
        x.slot_mapping[:n].copy_(slot_mapping, non_blocking=True)
        x.context_lens[:n].copy_(context_lens, non_blocking=True)
        x.block_tables[:n, :block_tables.shape[1]].copy_(block_tables, non_blocking=True)
        if bs > n:  # padding rows: write nothing, attend to one cached token
            x.slot_mapping[n:bs].fill_(-1)
            x.context_lens[n:bs].fill_(1)
            x.block_tables[n:bs, 0].fill_(0)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
