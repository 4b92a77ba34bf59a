"""The batched engine's KV cache: one row per active sequence, grown by doubling.

Per layer, K and V are `[rows, kv_heads, capacity, head_dim]`. The engine keeps its active
requests in rows `0..B-1` (a leaving request's row is refilled by moving the last one), so a step
attends over plain slices, no gather. Rows and capacity grow by doubling (capacity up to the
context limit); the engine shrinks the cache (`shrink`) when the rows still in use need a quarter of
it or less (a long prompt has left), and releases it when it goes idle.
"""

from __future__ import annotations

import itertools

import torch

__all__ = ["MIN_CAPACITY", "SlotCache"]

_VERSIONS = itertools.count(1)
MIN_CAPACITY = 256  # first cache length per row; doubled as sequences grow (never the full context upfront)


class SlotCache:
    """Per-layer K/V `[rows, kv_heads, capacity, head_dim]`, grown by doubling on demand."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        max_rows: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device,
        min_capacity: int = MIN_CAPACITY,
    ) -> None:
        self._shape = (num_layers, num_kv_heads, head_dim)
        self.max_rows, self.max_length = max_rows, max_length
        self._dtype, self._device = dtype, device
        self._min_capacity = min_capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.rows = 0
        self.capacity = 0
        # Changes whenever the K/V tensors are replaced, to a number no cache in this process has had:
        # (version, row range) names the memory an I/O binding points at (onnx.OnnxForward).
        self.version = next(_VERSIONS)

    def reserve(self, rows: int, length: int) -> None:
        """Make room for `rows` rows of `length` positions each (existing contents kept)."""
        if rows > self.max_rows or length > self.max_length:
            raise ValueError(f"cache limit is {self.max_rows} rows x {self.max_length} positions, asked {rows} x {length}")
        if rows <= self.rows and length <= self.capacity:
            return
        new_rows = _grow(self.rows, rows, self.max_rows, 1)
        new_capacity = _grow(self.capacity, length, self.max_length, self._min_capacity)
        num_layers, kv_heads, head_dim = self._shape
        shape = (new_rows, kv_heads, new_capacity, head_dim)
        for store in (self.keys, self.values):
            for index in range(num_layers):
                # Zeros, not empty: masked positions still enter attention's matmul with weight 0,
                # and 0 * NaN from uninitialised memory would poison the row.
                fresh = torch.zeros(shape, dtype=self._dtype, device=self._device)
                if store and self.rows:
                    fresh[: self.rows, :, : self.capacity] = store[index]
                if len(store) == num_layers:
                    store[index] = fresh
                else:
                    store.append(fresh)
        self.rows, self.capacity = new_rows, new_capacity
        self.version = next(_VERSIONS)

    def nbytes(self) -> int:
        return sum(t.nelement() * t.element_size() for store in (self.keys, self.values) for t in store)

    def shrink(self, rows: int, length: int) -> bool:
        """Reallocate smaller when `rows` rows of `length` positions (kept) need a quarter of the
        cache or less; True if it did. The hysteresis keeps it from growing and shrinking in turn."""
        if not self.rows:
            return False
        if rows == 0 or length == 0:
            self.release()
            return True
        new_rows = _grow(0, rows, self.max_rows, 1)
        new_capacity = _grow(0, length, self.max_length, self._min_capacity)
        if 4 * new_rows * new_capacity > self.rows * self.capacity:
            return False
        shape = (new_rows, self._shape[1], new_capacity, self._shape[2])
        for store in (self.keys, self.values):
            for index, tensor in enumerate(store):
                fresh = torch.zeros(shape, dtype=self._dtype, device=self._device)
                fresh[:rows, :, :length] = tensor[:rows, :, :length]
                store[index] = fresh  # the old tensor goes now, layer by layer: no second full copy
        self.rows, self.capacity = new_rows, new_capacity
        self.version = next(_VERSIONS)
        return True

    def move(self, source: int, target: int, length: int) -> None:
        """Copy row `source`'s first `length` positions into row `target`."""
        for store in (self.keys, self.values):
            for tensor in store:
                tensor[target, :, :length] = tensor[source, :, :length]

    def read(self, row: int, start: int, end: int) -> torch.Tensor:
        """Row `row`'s positions `start..end-1` for every layer: `[layers, 2, kv_heads, end-start, head_dim]` (a copy)."""
        return torch.stack(
            [torch.stack((k[row, :, start:end], v[row, :, start:end])) for k, v in zip(self.keys, self.values)]
        )

    def write(self, row: int, kv: torch.Tensor) -> None:
        """Put `kv` (`read`'s layout, n positions) into row `row`'s positions 0..n-1."""
        length = kv.shape[3]
        for index, (k, v) in enumerate(zip(self.keys, self.values)):
            k[row, :, :length] = kv[index, 0]
            v[row, :, :length] = kv[index, 1]

    def release(self) -> None:
        self.keys, self.values = [], []
        self.rows = self.capacity = 0
        self.version = next(_VERSIONS)


def _grow(current: int, needed: int, limit: int, start: int) -> int:
    size = max(current, start)
    while size < needed:
        size *= 2
    return min(size, limit)
