"""Process memory housekeeping."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    return libc


def release_free_heap() -> None:
    """Hands freed heap pages back to the OS. Loading frees many mid-sized dequantization buffers
    that glibc keeps in its heap (about 100 MB for a 135M model); without this the process stays
    that much larger for its whole life. A no-op where the C library is not glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def free_heap_bytes() -> int | None:
    """Bytes free inside glibc's heaps (mallinfo2's fordblks), None where unknown."""
    mallinfo2 = getattr(_libc(), "mallinfo2", None)
    return None if mallinfo2 is None else int(mallinfo2().fordblks)


class HeapTrimmer:
    """Hands free heap back once enough of it collects, looked at every `check_every` steps.

    Steps free tensors of many sizes (logits, chunked-prefill activations), and glibc, having raised
    its mmap threshold to the largest of them, keeps them in a heap that fragments: 32 sequences of
    128 tokens grew it by 35-40 MB, all of it free (a trim gave it back). A look costs a few
    microseconds, a trim ~1 ms. Without mallinfo2 (not glibc >= 2.33) it trims every 8 looks."""

    def __init__(self, check_every: int = 8, free_bytes: int = 16 << 20) -> None:
        self.check_every = check_every
        self.free_bytes = free_bytes
        self._steps = 0
        self._looks = 0

    def step(self) -> None:
        self._steps += 1
        if self._steps < self.check_every:
            return
        self._steps = 0
        free = free_heap_bytes()
        self._looks += 1
        if (free is not None and free >= self.free_bytes) or (free is None and self._looks % 8 == 0):
            release_free_heap()
