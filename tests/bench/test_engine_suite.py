"""`bench engine`'s closed loop over a fake engine: batch size respected, latencies from steps."""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.engine_suite import EngineSettings, closed_loop, prompts, run_engine
from bench.workload import parse_length


@dataclass
class _Delta:
    token_ids: list[int]


@dataclass
class _Out:
    request_id: str
    deltas: list[_Delta]
    finished: bool = False


@dataclass
class FakeEngine:
    """Each step gives every running request one token (two for the first, like a prefill + decode)."""

    running: dict[str, int] = field(default_factory=dict)  # request id -> tokens left
    most_running: int = 0
    added: list[tuple[str, int, int]] = field(default_factory=list)

    def add_request(self, rid: str, ids: list[int], params: object) -> None:
        self.running[rid] = params.max_tokens
        self.added.append((rid, len(ids), params.max_tokens))
        self.most_running = max(self.most_running, len(self.running))

    def step(self) -> list[_Out]:
        outs = []
        for rid in list(self.running):
            self.running[rid] -= 1
            done = self.running[rid] == 0
            outs.append(_Out(rid, [_Delta([7])], finished=done))
            if done:
                del self.running[rid]
        return outs


class FakeTokenizer:
    def apply_chat_template(self, conversation: list[dict]) -> str:
        return "<user>" + conversation[0]["content"]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1] * len(text.split())


@dataclass
class FakeLLM:
    engine: FakeEngine = field(default_factory=FakeEngine)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)


def _settings(**kw: object) -> EngineSettings:
    base = dict(model="fake", batches=(3,), input_len=parse_length("uniform:10-20", "input"),
                output_len=parse_length("uniform:2-6", "output"), num_requests=7, warmup=0)
    base.update(kw)
    return EngineSettings(**base)


def test_closed_loop_keeps_the_batch_full_and_times_every_token() -> None:
    llm = FakeLLM()
    work = prompts(llm, _settings(), "t", 7)
    records = closed_loop(llm, work, 3, "t", None)
    assert llm.engine.most_running == 3
    assert len(records) == 7 and not llm.engine.running
    assert sorted(r.output_tokens for r in records) == sorted(n for _, n in work)
    for r in records:
        assert 0 < r.ttft <= r.e2e and len(r.itls) == r.output_tokens - 1
    # The prompt lengths follow the distribution (plus the tag), the same for the same seed.
    assert [n for _, n in work] == [n for _, n in prompts(FakeLLM(), _settings(), "t", 7)]


def test_run_engine_builds_levels_per_batch_size() -> None:
    llm = FakeLLM()
    levels = run_engine(_settings(batches=(1, 4), repeats=2, warmup=1), {"gpu": "absent"}, {},
                        show_progress=False, llm=llm)
    assert [lv["load"] for lv in levels] == [{"batch": 1}, {"batch": 4}]
    for level in levels:
        assert len(level["repeats"]) == 2
        assert level["repeats"][0]["summary"]["completed"] == 7
        assert level["median"]["output_tok_s"] > 0
        assert level["repeats"][0]["energy"]["gpu"] == {"measured": False, "reason": "absent"}
    assert len(llm.engine.added) == 2 * 2 * (1 + 7)  # levels x repeats x (warm-up + measured)
