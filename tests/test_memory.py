"""The heap trimmer hands free heap back once enough collects, and only then."""
from __future__ import annotations

import pytest

from engine import memory


def test_heap_trimmer_trims_when_enough_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    free = {"bytes": 0}
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append(1))
    monkeypatch.setattr(memory, "free_heap_bytes", lambda: free["bytes"])
    trimmer = memory.HeapTrimmer(check_every=3, free_bytes=100)
    for _ in range(6):
        trimmer.step()
    assert calls == []  # looked twice, nothing to give back
    free["bytes"] = 100
    for _ in range(2):
        trimmer.step()
    assert calls == []  # not yet a look
    trimmer.step()
    assert calls == [1]


def test_heap_trimmer_without_mallinfo_trims_every_eighth_look(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append(1))
    monkeypatch.setattr(memory, "free_heap_bytes", lambda: None)
    trimmer = memory.HeapTrimmer(check_every=2)
    for _ in range(2 * 16):
        trimmer.step()
    assert len(calls) == 2


def test_free_heap_bytes_and_release_run() -> None:
    free = memory.free_heap_bytes()
    assert free is None or free >= 0
    memory.release_free_heap()
