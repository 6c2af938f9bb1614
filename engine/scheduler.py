"""Continuous batching under a per-step token budget (vLLM v1's rule: no prefill or decode phase;
each sequence's computed tokens catch up with its tokens, as far as the budget allows).

Running sequences are served first, in (priority, arrival) order; when blocks run out, the
lowest-priority, latest running sequence is preempted (its blocks freed, to be recomputed later) and no new sequence is admitted in
that step. Waiting sequences are admitted in (priority, arrival) order.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)  # tokens to compute for each of seqs
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 whole_prompts: bool = False) -> None:
        """whole_prompts: a waiting sequence is admitted only with the rest of its prompt in one step
        (an encoder's, which attends both ways within it); the budget must hold the longest."""
        self.block_manager = block_manager
        self.whole_prompts = whole_prompts
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: list[Sequence] = []  # sorted by schedule_key
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.schedule_key)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self._schedule_running(batch, self.max_num_batched_tokens)
        if not batch.preempted:
            self._schedule_waiting(batch, budget)
        return batch

    def finish(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is and free its blocks (finished or aborted)."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED

    def after_step(self, batch: ScheduledBatch) -> None:
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.block_manager.cache_full_blocks(seq)

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        # Highest priority first; victims come from the tail, so a victim is never already scheduled.
        self.running.sort(key=lambda s: s.schedule_key)
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.allocate(seq, n):
                victim = self._pick_victim()
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
                budget -= n
                i += 1
        return budget

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        i = 0
        while i < len(self.waiting) and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[i]
            if seq.wait_for is not None and not _prefilled(seq.wait_for):
                i += 1  # a sibling's prefill will fill the prefix cache for it
                continue
            seq.wait_for = None
            hits = self.block_manager.match_prefix(seq) if seq.num_computed_tokens == 0 else []
            rest = seq.num_tokens - seq.num_computed_tokens - len(hits) * self.block_manager.block_size
            n = min(rest, budget)
            if (self.whole_prompts and n < rest) or not self.block_manager.allocate(seq, n, hits):
                break
            if hits:
                seq.num_computed_tokens = len(hits) * self.block_manager.block_size
            if seq.num_preemptions == 0:
                seq.num_cached_prompt_tokens = seq.num_computed_tokens
            self.waiting.pop(i)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n

    def _pick_victim(self) -> Sequence:
        return self.running[-1]

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        batch.preempted.append(seq)
        self.add(seq)


def _prefilled(seq: Sequence) -> bool:
    return seq.is_finished or seq.num_computed_tokens >= seq.num_prompt_tokens
