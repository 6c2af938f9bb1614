"""The paged KV-cache bookkeeping: reference counts, the free list, and prefix caching.

No model is involved: sequences carry made-up token ids, and "computing" tokens only advances
num_computed_tokens, as the engine does after the model ran.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import engine.block_manager as block_manager_module
from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

# Prompts are a prefix of this corpus plus a short random tail, so that random prompts often share
# whole blocks (prefix hits) and sometimes only part of one.
CORPUS = tuple((i * 7 + 3) % 11 for i in range(32))
MAX_SEQ_LEN = 40  # the random operations stop appending tokens at this length


def make_seq(token_ids: Iterable[int], seq_id: int) -> Sequence:
    tokens = list(token_ids)
    return Sequence(seq_id=seq_id, request_id=f"req-{seq_id}", index=0, token_ids=tokens,
                    num_prompt_tokens=len(tokens), params=SamplingParams(max_tokens=MAX_SEQ_LEN),
                    max_num_tokens=len(tokens) + MAX_SEQ_LEN)


def admit(bm: BlockManager, seq: Sequence, num_new_tokens: int | None = None) -> list[int]:
    """Admits seq as the scheduler does (prefix hits first, then blocks for num_new_tokens more
    tokens, all the rest by default); returns the hits. The allocation must succeed."""
    hits = bm.match_prefix(seq)
    n = seq.num_tokens - len(hits) * bm.block_size if num_new_tokens is None else num_new_tokens
    assert bm.allocate(seq, n, hits)
    seq.num_computed_tokens = len(hits) * bm.block_size
    return hits


def compute(bm: BlockManager, seq: Sequence, num_tokens: int | None = None) -> None:
    """What the model step and scheduler.after_step do for seq (all its remaining tokens by default)."""
    if num_tokens is None:
        num_tokens = seq.num_tokens - seq.num_computed_tokens
    seq.num_computed_tokens += num_tokens
    bm.cache_full_blocks(seq)


def state_of(bm: BlockManager, seq: Sequence) -> tuple[Any, ...]:
    """Everything allocate may change, to compare before and after a refused allocation."""
    blocks = [(b.ref_count, b.block_hash, b.token_ids) for b in bm.blocks]
    seq_state = (list(seq.block_table), seq.num_cached_blocks, seq.num_computed_tokens)
    return blocks, list(bm.free_blocks), dict(bm.cached_blocks), seq_state


def check_invariants(bm: BlockManager, seqs: Iterable[Sequence]) -> None:
    """The block manager's invariants, given every sequence that is not finished (holding blocks or not)."""
    bs = bm.block_size
    holders: Counter[int] = Counter()
    for seq in seqs:
        table = seq.block_table
        assert len(set(table)) == len(table), f"seq {seq.seq_id} holds a block twice: {table}"
        holders.update(table)
        assert seq.num_cached_blocks <= len(table)
        assert seq.num_cached_blocks * bs <= seq.num_computed_tokens <= len(table) * bs
        for i, block_id in enumerate(table):
            block = bm.blocks[block_id]
            if block.block_hash is not None:  # a cached block holds exactly this sequence's tokens there
                assert i < len(seq.block_hashes) and block.block_hash == seq.block_hashes[i]
                assert block.token_ids == tuple(seq.token_ids[i * bs:(i + 1) * bs])
    for block in bm.blocks:
        assert block.ref_count == holders[block.block_id], f"block {block.block_id}: wrong ref_count"
    assert set(bm.free_blocks) == {b.block_id for b in bm.blocks if b.ref_count == 0}
    assert 0 <= bm.num_free_blocks <= bm.num_blocks
    hashed = {b.block_id: b.block_hash for b in bm.blocks if b.block_hash is not None}
    assert {block_id: h for h, block_id in bm.cached_blocks.items()} == hashed
    assert len(hashed) == len(bm.cached_blocks)
    for block_id in hashed:
        assert len(bm.blocks[block_id].token_ids) == bs
    if not bm.enable_prefix_caching:
        assert not hashed
    # The free list hands out blocks without contents before any cached one.
    free_hashed = [bm.blocks[b].block_hash is not None for b in bm.free_blocks]
    assert free_hashed == sorted(free_hashed)


prompts = st.builds(lambda n, tail: list(CORPUS[:n]) + tail,
                    st.integers(0, 16), st.lists(st.integers(0, 3), max_size=6)).filter(bool)


class BlockManagerMachine(RuleBasedStateMachine):
    """Random admissions (with and without prefix hits), steps, frees and preemptions."""

    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(1, 1)
        self.running: list[Sequence] = []  # sequences holding blocks
        self.preempted: list[Sequence] = []  # blocks freed and progress reset, waiting to be readmitted
        self.num_seqs = 0

    @initialize(num_blocks=st.integers(1, 10), block_size=st.integers(1, 4), prefix_caching=st.booleans())
    def create(self, num_blocks: int, block_size: int, prefix_caching: bool) -> None:
        self.bm = BlockManager(num_blocks, block_size, prefix_caching)

    @rule(tokens=prompts, chunk=st.integers(1, 12), use_prefix=st.booleans())
    def admit_new(self, tokens: list[int], chunk: int, use_prefix: bool) -> None:
        self.num_seqs += 1
        self._admit(make_seq(tokens, seq_id=self.num_seqs), chunk, use_prefix)

    @precondition(lambda self: self.preempted)
    @rule(pick=st.integers(0, 99), chunk=st.integers(1, 12), use_prefix=st.booleans())
    def readmit_preempted(self, pick: int, chunk: int, use_prefix: bool) -> None:
        seq = self.preempted[pick % len(self.preempted)]
        if self._admit(seq, chunk, use_prefix):
            self.preempted.remove(seq)

    @precondition(lambda self: self.running)
    @rule(pick=st.integers(0, 99), chunk=st.integers(1, 12))
    def step(self, pick: int, chunk: int) -> None:
        seq = self.running[pick % len(self.running)]
        n = min(chunk, seq.num_tokens - seq.num_computed_tokens)
        if n > 0 and self._allocate(seq, n):
            self._compute(seq, n)

    @precondition(lambda self: self.running)
    @rule(pick=st.integers(0, 99))
    def free(self, pick: int) -> None:
        seq = self.running.pop(pick % len(self.running))
        self.bm.free(seq)
        assert seq.block_table == [] and seq.num_cached_blocks == 0

    @precondition(lambda self: self.running)
    @rule(pick=st.integers(0, 99))
    def preempt(self, pick: int) -> None:
        seq = self.running.pop(pick % len(self.running))
        self.bm.free(seq)
        seq.num_computed_tokens = 0
        self.preempted.append(seq)

    @invariant()
    def bookkeeping_is_consistent(self) -> None:
        check_invariants(self.bm, self.running + self.preempted)

    def _admit(self, seq: Sequence, chunk: int, use_prefix: bool) -> bool:
        bm = self.bm
        hits: list[int] = []
        if use_prefix:
            hits = bm.match_prefix(seq)
            self._check_hits(seq, hits)
        n = min(chunk, seq.num_tokens - len(hits) * bm.block_size)
        if not self._allocate(seq, n, hits):
            return False
        assert seq.block_table[:len(hits)] == hits
        seq.num_computed_tokens = len(hits) * bm.block_size
        self.running.append(seq)
        self._compute(seq, n)
        return True

    def _allocate(self, seq: Sequence, n: int, hits: list[int] | None = None) -> bool:
        bm, num_hits, num_held, before = self.bm, len(hits or []), len(seq.block_table), state_of(self.bm, seq)
        if bm.allocate(seq, n, hits):
            needed = bm.blocks_for(seq.num_computed_tokens + num_hits * bm.block_size + n)
            assert len(seq.block_table) == max(num_held + num_hits, needed)
            return True
        assert state_of(bm, seq) == before, "a refused allocation changed the state"
        return False

    def _compute(self, seq: Sequence, n: int) -> None:
        compute(self.bm, seq, n)
        if seq.num_computed_tokens == seq.num_tokens and seq.num_tokens < MAX_SEQ_LEN:
            seq.token_ids.append((seq.token_ids[-1] * 5 + 1) % 4)  # the "sampled" token

    def _check_hits(self, seq: Sequence, hits: list[int]) -> None:
        """Hits hold seq's leading blocks, as many as the cache has, but never all of seq's tokens."""
        bm, bs = self.bm, self.bm.block_size
        if not bm.enable_prefix_caching:
            assert hits == []
            return
        assert len(hits) * bs < seq.num_tokens
        for i, block_id in enumerate(hits):
            block = bm.blocks[block_id]
            assert block.block_hash == seq.block_hashes[i]
            assert block.token_ids == tuple(seq.token_ids[i * bs:(i + 1) * bs])
        i = len(hits)
        if (i + 1) * bs < seq.num_tokens:
            next_block = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            assert not any(b.block_hash == seq.block_hashes[i] and b.token_ids == next_block for b in bm.blocks)


BlockManagerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestBlockManagerInvariantsHoldUnderRandomOperations = BlockManagerMachine.TestCase


def test_prompts_sharing_k_full_blocks_share_exactly_those_physical_blocks() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    shared = list(range(12))  # 3 full blocks
    a = make_seq(shared + [100, 101, 102, 103, 104], seq_id=1)
    admit(bm, a)
    compute(bm, a)
    b = make_seq(shared + [200, 201], seq_id=2)
    hits = admit(bm, b)
    assert hits == a.block_table[:3]
    assert b.block_table[:3] == a.block_table[:3]
    assert not set(b.block_table[3:]) & set(a.block_table)
    assert b.num_computed_tokens == 12 and b.num_cached_blocks == 3
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 2, 1, 1]
    check_invariants(bm, [a, b])


def test_a_partial_block_is_never_shared() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(range(10), seq_id=1)  # blocks [0..3] [4..7] and a partial [8, 9]
    admit(bm, a)
    compute(bm, a)
    b = make_seq(list(range(10)) + [50, 51, 52], seq_id=2)
    assert admit(bm, b) == a.block_table[:2]


def test_a_hash_hit_whose_tokens_differ_is_not_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_manager_module, "_block_hash", lambda parent, tokens: 42)  # every block collides
    bm = BlockManager(num_blocks=8, block_size=2)
    a = make_seq([1, 2, 3], seq_id=1)
    admit(bm, a)
    compute(bm, a)
    assert bm.cached_blocks == {42: a.block_table[0]}
    b = make_seq([7, 8, 9], seq_id=2)
    assert bm.match_prefix(b) == []
    c = make_seq([1, 2, 9], seq_id=3)
    assert bm.match_prefix(c) == [a.block_table[0]]


def test_block_hashes_tell_apart_parents_that_pythons_hash_conflates() -> None:
    parent = 12345
    twin = parent + 2**61 - 1  # hash((parent, t)) == hash((twin, t)) for any t
    assert hash((parent, (7, 7))) == hash((twin, (7, 7)))
    assert block_manager_module._block_hash(parent, [7, 7]) != block_manager_module._block_hash(twin, [7, 7])


@pytest.mark.parametrize("num_full_blocks", [1, 2, 3])
def test_a_prompt_of_whole_blocks_leaves_its_last_block_to_compute(num_full_blocks: int) -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    tokens = list(range(4 * num_full_blocks))
    a = make_seq(tokens, seq_id=1)
    admit(bm, a)
    compute(bm, a)
    assert len(bm.cached_blocks) == num_full_blocks
    b = make_seq(tokens, seq_id=2)
    hits = admit(bm, b)
    assert len(hits) == num_full_blocks - 1
    assert b.num_computed_tokens == len(tokens) - 4  # at least one token left for the model's logits
    assert len(b.block_table) == num_full_blocks


def test_freed_cached_blocks_stay_hittable_until_reallocated() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], seq_id=1)
    admit(bm, a)
    compute(bm, a)
    cached = a.block_table[:2]
    bm.free(a)
    assert bm.num_free_blocks == 4
    b = make_seq([1, 2, 3, 4, 6], seq_id=2)
    assert admit(bm, b) == cached  # hit although no sequence held them
    bm.free(b)
    filler = make_seq([9] * 8, seq_id=3)  # takes all four blocks: the cached ones are reallocated
    admit(bm, filler)
    assert not bm.cached_blocks
    bm.free(filler)
    assert bm.match_prefix(make_seq([1, 2, 3, 4, 7], seq_id=4)) == []


def test_eviction_takes_the_least_recently_freed_cached_block_first() -> None:
    bm = BlockManager(num_blocks=6, block_size=2)
    a = make_seq([1, 1, 2, 2, 0], seq_id=1)  # two full blocks and a partial one
    b = make_seq([3, 3, 4, 4, 0], seq_id=2)
    for seq in (a, b):
        admit(bm, seq)
        compute(bm, seq)
    a_blocks, b_blocks = list(a.block_table), list(b.block_table)
    bm.free(a)
    bm.free(b)
    # Partial (uncached) blocks first, then a's cached blocks tail first, then b's.
    evicted: list[int] = []
    for seq_id in range(4, 10):
        seq = make_seq([9, seq_id], seq_id=seq_id)
        admit(bm, seq)
        evicted += seq.block_table
    assert set(evicted[:2]) == {a_blocks[2], b_blocks[2]}
    assert evicted[2:] == [a_blocks[1], a_blocks[0], b_blocks[1], b_blocks[0]]


def test_a_hit_block_freed_again_counts_as_recently_used() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq([1, 1, 0], seq_id=1)  # one full block, cached, and a partial one
    b = make_seq([2, 2, 0], seq_id=2)
    for seq in (a, b):
        admit(bm, seq)
        compute(bm, seq)
    a_cached, b_cached = a.block_table[0], b.block_table[0]
    bm.free(a)
    bm.free(b)
    reuse = make_seq([1, 1, 5], seq_id=3)
    assert admit(bm, reuse) == [a_cached]
    bm.free(reuse)  # a's cached block was used after b's: b's is evicted first now
    taker = make_seq([9] * 8, seq_id=4)
    admit(bm, taker)
    assert taker.block_table[2:] == [b_cached, a_cached]


def test_blocks_without_contents_are_reused_before_cached_ones() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq([1, 2, 3, 4], seq_id=1)
    admit(bm, a)
    compute(bm, a)
    a_blocks = list(a.block_table)
    bm.free(a)
    assert len(bm.cached_blocks) == 2
    b = make_seq([7, 7, 7, 7, 7], seq_id=2)  # three blocks: the two empty ones, then a's last block
    admit(bm, b)
    assert not set(b.block_table[:2]) & set(a_blocks)
    assert b.block_table[2] == a_blocks[1]
    assert list(bm.cached_blocks.values()) == [a_blocks[0]]
    assert bm.match_prefix(make_seq([1, 2, 3, 4, 5], seq_id=3)) == [a_blocks[0]]


def test_disabled_prefix_caching_never_hits() -> None:
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    a = make_seq([1, 2, 3, 4, 5], seq_id=1)
    admit(bm, a)
    compute(bm, a)
    assert bm.cached_blocks == {} and a.num_cached_blocks == 0
    b = make_seq([1, 2, 3, 4, 5], seq_id=2)
    assert admit(bm, b) == []
    assert not set(a.block_table) & set(b.block_table)
    check_invariants(bm, [a, b])


def test_a_refused_allocation_changes_nothing() -> None:
    bm = BlockManager(num_blocks=3, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], seq_id=1)
    admit(bm, a)
    compute(bm, a)
    bm.free(a)  # two cached free blocks and one empty one
    b = make_seq([1, 2, 3, 4] + [0] * 5, seq_id=2)  # hits two blocks, then needs three more
    hits = bm.match_prefix(b)
    assert len(hits) == 2
    before = state_of(bm, b)
    assert not bm.allocate(b, 5, hits)
    assert state_of(bm, b) == before
    assert bm.allocate(b, 1, hits)  # one empty block left beside the two hits
    assert bm.num_free_blocks == 0
