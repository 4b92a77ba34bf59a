"""Give the C heap's free memory back to the OS (glibc's `malloc_trim`), where there is one.

glibc keeps freed memory in its arenas for reuse. Tensors up to its dynamic mmap threshold (which
rises to 32 MiB after a large block is freed) come from those arenas, so after a long prompt's KV
rows and activations are freed the process's RSS stays where the peak left it. `malloc_trim(0)`
returns the arenas' free pages (their tops and the free chunks inside them). The LLM engine calls it
when it goes idle and after a long prompt has left, the encoders after a batch of large media;
elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache

__all__ = ["trim_heap"]

log = logging.getLogger(__name__)


@cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return free heap memory to the OS; False where the C library has no `malloc_trim`."""
    trim = _malloc_trim()
    if trim is None:
        return False
    try:
        trim(0)
    except OSError:  # pragma: no cover - a foreign libc that exports the name but faults
        log.warning("malloc_trim failed", exc_info=True)
        return False
    return True
