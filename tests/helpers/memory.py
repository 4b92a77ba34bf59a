"""Peak Python allocation of a call, for "no giant allocation" assertions on hostile input."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable


def peak_bytes(fn: Callable[[], object]) -> int:
    """Bytes at the peak of traced allocations while `fn` runs (its exceptions propagate)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak
