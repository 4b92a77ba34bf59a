"""A small content-addressed cache of encoder outputs: the same image or clip twice → one encode.

Keys are the SHA-256 of the media bytes plus whatever else changes the output (e.g. "features" vs
"transcript", a forced language). Values are held with their size in bytes; the least recently used
entries are evicted once `max_bytes` is exceeded. Thread-safe: encoder replicas run their model work
in worker threads.

Customer-service traffic repeats media often (the same photo re-sent with each turn of a
conversation, since the OpenAI API is stateless), which is where this pays.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def media_key(data: bytes, *options: Any) -> str:
    """SHA-256 of the bytes, then the options that change the encoder's output."""
    digest = hashlib.sha256(data).hexdigest()
    return digest if not options else digest + "|" + "|".join(repr(o) for o in options)


def nbytes(value: Any) -> int:
    """Approximate memory held by a cached value (arrays and tensors exactly, containers summed)."""
    if value is None:
        return 0
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, (str, bytes)):
        return sys.getsizeof(value)
    if isinstance(value, dict):
        return sum(nbytes(k) + nbytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if hasattr(value, "__dict__"):
        return sum(nbytes(v) for v in vars(value).values())
    return sys.getsizeof(value)


@dataclass
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int


class FeatureCache:
    """LRU mapping key → value, bounded by total bytes. `max_bytes=0` disables it."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[0]

    def touch(self, key: str) -> None:
        """Mark `key` as just used (if present), without counting a hit."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)

    def put(self, key: str, value: Any) -> None:
        size = nbytes(value)
        if size > self.max_bytes:  # also covers a disabled cache
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _key, (_value, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._bytes, self.max_bytes)
