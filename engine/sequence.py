"""The engine's state for one generated sequence (one choice of one request)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    request_id: str
    index: int  # the choice index within its request (0 .. n-1)
    token_ids: list[int]  # prompt followed by generated tokens
    num_prompt_tokens: int
    params: SamplingParams
    max_num_tokens: int  # prompt + generated may not exceed this
    priority: int = 0  # lower runs first
    arrival_order: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    # Chained hash of each full block of token_ids, filled as blocks become full.
    block_hashes: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0  # leading entries of block_table registered in (or hit from) the prefix cache
    num_computed_tokens: int = 0
    num_cached_prompt_tokens: int = 0  # prompt tokens served by the prefix cache at first admission
    num_preemptions: int = 0
    # A sibling (same prompt, n > 1) whose prefill this sequence waits for, to share its blocks.
    wait_for: Sequence | None = None
    generator: torch.Generator | None = None
    detokenizer: Any = None
    logprobs: list[Any] = field(default_factory=list)
    # Mean pooling (engine/pooling.py): the float32 sum of the hidden states computed so far.
    pooled_sum: torch.Tensor | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def schedule_key(self) -> tuple[int, int, int]:
        return (self.priority, self.arrival_order, self.index)
