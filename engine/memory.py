"""Process memory housekeeping."""
from __future__ import annotations

import ctypes
import ctypes.util


def release_free_heap() -> None:
    """Hands freed heap pages back to the OS. Loading frees many mid-sized dequantization buffers
    that glibc keeps in its heap (about 100 MB for a 135M model); without this the process stays
    that much larger for its whole life. A no-op where the C library is not glibc."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
    if trim is not None:
        trim(0)
