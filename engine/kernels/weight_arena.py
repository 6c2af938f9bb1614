"""Memory in 2 MB pages, for the packed linear weights and the CPU KV cache.

A decode step at batch 1 streams every weight once (270 MB for SmolLM2-135M). In 4 KB pages that is
~66,000 pages a step: a TLB miss and a page walk every 64 cache lines, and the hardware prefetchers
stop at each page boundary. Linux backs anonymous memory with 2 MB pages only where asked
(`/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` on many hosts), so the packed weights
are carved from anonymous mappings advised MADV_HUGEPAGE before they are first touched: ~10% off
that step here (bench/RESULTS.md). The KV cache (model_runner.py) is read a block (a few KB) at
a time from all over its 256 MB: in 4 KB pages most such reads also missed the TLB. Where the
advice is not available the memory is ordinary.

Chunks are carved front to back, never reused: a tensor keeps its chunk alive
(`torch.frombuffer`), and the arena only the chunk it is filling.
"""
from __future__ import annotations

import math
import mmap
import threading

import torch

_HUGE_PAGE = 2 << 20
_CHUNK = 256 << 20  # few chunks: each ends in a partly filled 2 MB page, resident whole
_ALIGN = 64  # a cache line: every packed tile starts on one


class WeightArena:
    def __init__(self, chunk_bytes: int = _CHUNK) -> None:
        self._chunk_bytes = chunk_bytes
        self._chunk: mmap.mmap | None = None
        self._start = 0  # first 2 MB boundary inside the chunk
        self._offset = 0
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized CPU tensor of `shape` in the arena's memory."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        count = math.prod(shape)
        nbytes = count * itemsize
        with self._lock:
            if self._chunk is None or self._offset + nbytes > len(self._chunk):
                self._new_chunk(nbytes)
            assert self._chunk is not None
            tensor = torch.frombuffer(self._chunk, dtype=dtype, count=count, offset=self._offset)
            self._offset += -(-nbytes // _ALIGN) * _ALIGN
        return tensor.view(shape)

    def _new_chunk(self, nbytes: int) -> None:
        # One huge page more than asked, so that the usable part can start on a 2 MB boundary.
        size = -(-max(self._chunk_bytes, nbytes + _HUGE_PAGE) // _HUGE_PAGE) * _HUGE_PAGE + _HUGE_PAGE
        chunk = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is not None:
            try:
                chunk.madvise(advice)
            except OSError:  # a kernel without transparent huge pages: ordinary pages then
                pass
        address = torch.frombuffer(chunk, dtype=torch.uint8, count=1).data_ptr()
        self._chunk = chunk
        self._start = -address % _HUGE_PAGE
        self._offset = self._start


_ARENA = WeightArena()


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized CPU tensor in 2 MB pages where the system allows."""
    return _ARENA.empty(shape, dtype)
