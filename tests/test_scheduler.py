"""The token-budget scheduler, driven by a model-free copy of the engine's step loop.

The simulated engine also keeps a fake KV cache: each computed position writes, into the slot its
block table maps it to, the prefix it stands for; every position a step's attention would read must
then hold this sequence's own prefix. That checks paging, sharing and eviction end to end.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import hypothesis.strategies as st
from hypothesis import given, settings

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence, SequenceStatus
from tests.test_block_manager import CORPUS, check_invariants


def prefilled(seq: Sequence) -> bool:
    return seq.is_finished or seq.num_computed_tokens >= seq.num_prompt_tokens


class EngineSim:
    """The engine's step loop without a model: schedule, "run", after_step, sample, finish."""

    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int = 8,
                 max_num_batched_tokens: int = 64, prefix_caching: bool = True) -> None:
        self.bm = BlockManager(num_blocks, block_size, prefix_caching)
        self.scheduler = Scheduler(self.bm, max_num_seqs, max_num_batched_tokens)
        self.seqs: list[Sequence] = []
        self.kv: dict[int, tuple[int, ...]] = {}  # slot -> the prefix whose last token's KV it holds
        self.finished: list[Sequence] = []  # in finishing order, aborts included
        self.aborted: list[Sequence] = []
        self._arrivals = itertools.count()

    def add(self, prompt: list[int], max_tokens: int, n: int = 1, priority: int = 0) -> list[Sequence]:
        arrival = next(self._arrivals)
        params = SamplingParams(n=n, max_tokens=max_tokens)
        request: list[Sequence] = []
        for index in range(n):
            seq = Sequence(seq_id=len(self.seqs), request_id=f"req-{arrival}", index=index,
                           token_ids=list(prompt), num_prompt_tokens=len(prompt), params=params,
                           max_num_tokens=len(prompt) + max_tokens, priority=priority,
                           arrival_order=arrival, wait_for=request[0] if index else None)
            request.append(seq)
            self.seqs.append(seq)
            self.scheduler.add(seq)
        return request

    def abort(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        self.finished.append(seq)
        self.aborted.append(seq)
        assert seq.block_table == [] and seq.status is SequenceStatus.FINISHED
        self.check_invariants()  # its blocks are free (or held by others only) at once

    def step(self) -> ScheduledBatch:
        sched = self.scheduler
        running, waiting = list(sched.running), list(sched.waiting)
        waits_for = {s.seq_id: s.wait_for for s in waiting if s.wait_for is not None}
        batch = sched.schedule()
        self._check_batch(batch, running, waiting, waits_for)
        self._run_model(batch)
        sched.after_step(batch)
        for seq in batch.seqs:
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append((seq.token_ids[-1] * 3 + seq.index + 1) % 5)  # the "sampled" token
                if seq.num_tokens >= seq.max_num_tokens:
                    sched.finish(seq)
                    self.finished.append(seq)
        self.check_invariants()
        return batch

    def check_invariants(self) -> None:
        sched = self.scheduler
        assert all(s.status is SequenceStatus.RUNNING for s in sched.running)
        assert all(s.status is SequenceStatus.WAITING for s in sched.waiting)
        assert sched.waiting == sorted(sched.waiting, key=lambda s: s.schedule_key)
        for seq in sched.waiting:
            assert seq.block_table == [] and seq.num_computed_tokens == 0
        for seq in sched.running:
            assert seq.num_computed_tokens < seq.num_tokens  # every running sequence has work left
        check_invariants(self.bm, sched.running + sched.waiting)

    def _check_batch(self, batch: ScheduledBatch, running: list[Sequence], waiting: list[Sequence],
                     waits_for: dict[int, Sequence]) -> None:
        sched, bs = self.scheduler, self.bm.block_size
        assert batch.total_tokens <= sched.max_num_batched_tokens
        assert len(sched.running) <= sched.max_num_seqs
        assert len(set(map(id, batch.seqs))) == len(batch.seqs)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            assert seq.status is SequenceStatus.RUNNING and seq in sched.running
            assert 1 <= n <= seq.num_tokens - seq.num_computed_tokens
            assert seq.num_computed_tokens + n <= len(seq.block_table) * bs
            if n < seq.num_tokens - seq.num_computed_tokens:
                assert batch.total_tokens == sched.max_num_batched_tokens  # chunked only when the budget is spent
        for seq in batch.preempted:  # recomputed from zero later; blocks freed at once
            assert seq in running and seq not in batch.seqs and seq in sched.waiting
            assert seq.num_computed_tokens == 0 and seq.block_table == []
        # Running sequences in (priority, arrival) order; victims taken from the tail, latest first.
        in_order = sorted(running, key=lambda s: s.schedule_key)
        served = [s for s in batch.seqs if s in running]
        left_out = in_order[len(served):len(in_order) - len(batch.preempted)]
        assert in_order == served + left_out + batch.preempted[::-1]
        admitted = batch.seqs[len(served):]
        assert all(s in waiting for s in admitted)
        if batch.preempted or left_out:
            assert admitted == []  # no admission in a step that preempted or ran out of budget
            assert not left_out or batch.total_tokens == sched.max_num_batched_tokens
        # Admission in (priority, arrival) order, passing over only siblings whose first sibling's
        # prompt is not computed yet (prefix hits at its admission in this step count as computed).
        for seq in admitted:
            assert seq.seq_id not in waits_for or prefilled(waits_for[seq.seq_id])
            assert seq.num_computed_tokens % bs == 0  # prefix hits are whole blocks
            for passed_over in sched.waiting:
                if passed_over in waiting and passed_over.schedule_key < seq.schedule_key:
                    assert passed_over.wait_for is not None and not prefilled(passed_over.wait_for)

    def _run_model(self, batch: ScheduledBatch) -> None:
        bs = self.bm.block_size
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            for pos in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
                self.kv[seq.block_table[pos // bs] * bs + pos % bs] = tuple(seq.token_ids[:pos + 1])
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            for pos in range(seq.num_computed_tokens + n):
                slot = seq.block_table[pos // bs] * bs + pos % bs
                assert self.kv.get(slot) == tuple(seq.token_ids[:pos + 1]), f"seq {seq.seq_id} reads wrong KV at {pos}"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    prompt: list[int]
    max_tokens: int
    n: int
    priority: int
    arrival_step: int
    abort: tuple[int, int] | None  # (step, sibling index) at which one of its sequences is aborted


@dataclass(frozen=True, slots=True)
class Workload:
    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    prefix_caching: bool
    requests: list[RequestSpec]


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    block_size = draw(st.integers(1, 4))
    num_blocks = draw(st.integers(2, 10))
    capacity = num_blocks * block_size  # every request fits in the cache alone
    requests: list[RequestSpec] = []
    for _ in range(draw(st.integers(1, 6))):
        max_tokens = draw(st.integers(1, min(8, capacity - 1)))
        prompt_len = draw(st.integers(1, capacity - max_tokens))
        shared = draw(st.integers(0, min(prompt_len, len(CORPUS))))
        tail = draw(st.lists(st.integers(0, 4), min_size=prompt_len - shared, max_size=prompt_len - shared))
        n = draw(st.integers(1, 3))
        abort = draw(st.none() | st.tuples(st.integers(0, 30), st.integers(0, n - 1)))
        requests.append(RequestSpec(list(CORPUS[:shared]) + tail, max_tokens, n, draw(st.integers(0, 2)),
                                    draw(st.integers(0, 8)), abort))
    return Workload(num_blocks, block_size, draw(st.integers(1, 4)), draw(st.integers(1, 12)),
                    draw(st.booleans()), requests)


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_random_workloads_respect_the_limits_and_every_sequence_finishes(w: Workload) -> None:
    sim = EngineSim(w.num_blocks, w.block_size, w.max_num_seqs, w.max_num_batched_tokens, w.prefix_caching)
    requests: dict[int, list[Sequence]] = {}
    total_tokens = sum(r.n * (len(r.prompt) + r.max_tokens) for r in w.requests)
    last_arrival = max(r.arrival_step for r in w.requests)
    max_steps = last_arrival + 20 * total_tokens  # seen: under 5 * total_tokens
    for step in itertools.count():
        assert step <= max_steps, "a sequence starves"
        for i, r in enumerate(w.requests):
            if r.arrival_step == step:
                requests[i] = sim.add(r.prompt, r.max_tokens, r.n, r.priority)
            if r.abort is not None and r.abort[0] == step and i in requests:
                seq = requests[i][r.abort[1]]
                if not seq.is_finished:
                    sim.abort(seq)
        if step > last_arrival and not sim.scheduler.has_unfinished():
            break
        sim.step()
    assert len(sim.finished) == len(sim.seqs)
    for seq in sim.seqs:
        assert seq.is_finished and seq.block_table == []
        if seq not in sim.aborted:
            assert seq.num_output_tokens == seq.params.max_tokens
    assert sim.bm.num_free_blocks == sim.bm.num_blocks
    check_invariants(sim.bm, [])


def test_chunked_prefill_spreads_a_long_prompt_over_steps_beside_decodes() -> None:
    sim = EngineSim(num_blocks=32, block_size=4, max_num_batched_tokens=8)
    [a] = sim.add([1, 2, 3], max_tokens=10)
    assert sim.step().num_new_tokens == [3]
    [b] = sim.add(list(range(10, 30)), max_tokens=2)
    steps = [sim.step() for _ in range(4)]
    assert [(batch.seqs, batch.num_new_tokens) for batch in steps] == [
        ([a, b], [1, 7]), ([a, b], [1, 7]), ([a, b], [1, 6]), ([a, b], [1, 1])]
    assert b.num_output_tokens == 2 and b.is_finished


def test_preemption_frees_the_victims_blocks_at_once_and_admits_nothing_that_step() -> None:
    sim = EngineSim(num_blocks=4, block_size=2)
    [a] = sim.add([1, 2, 3], max_tokens=5)
    [b] = sim.add([4, 5, 6], max_tokens=5, priority=1)
    sim.step()  # both prefilled: two blocks each
    sim.step()  # both decode into their second block
    [c] = sim.add([7], max_tokens=1)  # one block would be left for it after the preemption
    batch = sim.step()  # a needs a third block: b, the lower priority, is preempted
    assert batch.preempted == [b] and batch.seqs == [a]
    assert b.num_computed_tokens == 0 and b.block_table == [] and b.num_preemptions == 1
    assert b.status is SequenceStatus.WAITING and c.status is SequenceStatus.WAITING
    assert sim.bm.num_free_blocks == 1
    assert sim.step().seqs == [a, c]


def test_a_preempted_sequence_is_recomputed_with_its_generated_tokens() -> None:
    sim = EngineSim(num_blocks=4, block_size=2, prefix_caching=False)
    [a] = sim.add([1, 2, 3], max_tokens=5)
    [b] = sim.add([4, 5, 6], max_tokens=5)
    for _ in range(3):
        sim.step()
    assert b.num_preemptions == 1 and b.num_tokens == 5
    while b.status is not SequenceStatus.RUNNING:
        sim.step()
    assert b.num_computed_tokens == 5  # its prompt and both generated tokens, recomputed in one step
    while sim.scheduler.has_unfinished():
        sim.step()
    assert a.num_output_tokens == b.num_output_tokens == 5


def test_waiting_sequences_are_admitted_by_priority_then_arrival() -> None:
    sim = EngineSim(num_blocks=8, block_size=2, max_num_seqs=1)
    late_low = sim.add([1], max_tokens=1, priority=1)
    first_high = sim.add([2], max_tokens=1, priority=0)
    lowest = sim.add([3], max_tokens=1, priority=2)
    second_high = sim.add([4], max_tokens=1, priority=0)
    while sim.scheduler.has_unfinished():
        sim.step()
    assert sim.finished == first_high + second_high + late_low + lowest


def test_siblings_wait_for_the_first_prefill_then_share_its_prompt_blocks() -> None:
    sim = EngineSim(num_blocks=16, block_size=4, max_num_batched_tokens=6)
    first, second, third = sim.add(list(range(10)), max_tokens=3, n=3)
    assert sim.step().seqs == [first]  # 6 of 10 prompt tokens
    assert sim.step().seqs == [first]  # the rest of the prompt, while the siblings still wait
    batch = sim.step()
    assert batch.seqs == [first, second, third] and batch.num_new_tokens == [1, 2, 2]
    for sibling in (second, third):
        assert sibling.block_table[:2] == first.block_table[:2]
        assert sibling.num_cached_prompt_tokens == 8
    assert [sim.bm.blocks[b].ref_count for b in first.block_table] == [3, 3, 1]


def test_siblings_stop_waiting_when_the_first_is_aborted() -> None:
    sim = EngineSim(num_blocks=16, block_size=4, max_num_batched_tokens=4)
    first, second = sim.add(list(range(10)), max_tokens=3, n=2)
    sim.step()
    sim.abort(first)
    assert sim.step().seqs == [second]


def test_aborting_a_running_sequence_frees_its_blocks_at_once() -> None:
    sim = EngineSim(num_blocks=8, block_size=2, max_num_batched_tokens=4)
    [a] = sim.add(list(range(7)), max_tokens=4)
    sim.step()  # a partial prefill: 4 of 7 tokens
    assert a.status is SequenceStatus.RUNNING and sim.bm.num_free_blocks == 6
    sim.abort(a)
    assert sim.bm.num_free_blocks == 8 and not sim.scheduler.has_unfinished()


def test_aborting_a_waiting_sequence_removes_it_from_the_queue() -> None:
    sim = EngineSim(num_blocks=4, block_size=2, max_num_seqs=1)
    sim.add([1, 2, 3], max_tokens=5)
    [b] = sim.add([4, 5], max_tokens=1)
    sim.step()
    sim.abort(b)
    assert sim.scheduler.waiting == [] and b.is_finished


def test_aborting_a_preempted_sequence_removes_it_from_the_queue() -> None:
    sim = EngineSim(num_blocks=4, block_size=2, prefix_caching=False)
    [a] = sim.add([1, 2, 3], max_tokens=5)
    [b] = sim.add([4, 5, 6], max_tokens=5)
    for _ in range(3):
        sim.step()
    assert b.num_preemptions == 1 and b in sim.scheduler.waiting
    sim.abort(b)
    assert sim.scheduler.waiting == [] and sim.bm.num_free_blocks == 1
    while sim.scheduler.has_unfinished():
        sim.step()
    assert a.num_output_tokens == 5 and sim.bm.num_free_blocks == 4


def test_step_budget_defaults_by_device_and_yields_to_a_given_one() -> None:
    # CPU steps of 512 tokens stalled running streams ~250 ms (bench/RESULTS.md); GPUs keep 512.
    assert EngineConfig().max_num_batched_tokens == 256
    assert EngineConfig(device="cuda").max_num_batched_tokens == 512
    assert EngineConfig(max_num_batched_tokens=1024).max_num_batched_tokens == 1024


def test_whole_prompts_are_admitted_only_whole_in_order() -> None:
    """An encoder's scheduler: a prompt that does not fit what is left of the budget waits for the next
    step (and so do those behind it), never split."""
    bm = BlockManager(64, 4, False)
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=16, whole_prompts=True)
    seqs = [Sequence(seq_id=i, request_id=str(i), index=0, token_ids=list(range(n)), num_prompt_tokens=n,
                     params=SamplingParams(max_tokens=None), max_num_tokens=n, arrival_order=i)
            for i, n in enumerate((10, 9, 6, 16))]
    for seq in seqs:
        scheduler.add(seq)
    steps = []
    while scheduler.has_unfinished():
        batch = scheduler.schedule()
        scheduler.after_step(batch)
        steps.append(list(zip([s.seq_id for s in batch.seqs], batch.num_new_tokens)))
        for seq in batch.seqs:  # each prompt is done in its step (an embedding finishes there)
            scheduler.finish(seq)
    assert steps == [[(0, 10)], [(1, 9), (2, 6)], [(3, 16)]]
