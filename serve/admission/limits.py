"""Requests in flight at this ingress replica: a cap, and slots that are always given back.

A slot is taken when a request is admitted and released exactly once: by the route when its
response is complete, or by the stream that carries the response when that stream ends. `release`
is idempotent, so every path (success, error, cancellation, disconnect) can call it in `finally`.
"""

from __future__ import annotations

from serve import metrics
from serve.errors import Overloaded

OVERLOAD_RETRY_AFTER_S = 2


class Slot:
    """One admitted request's place in the count; `release()` any number of times, counts once."""

    def __init__(self, counter: InFlight, route: str) -> None:
        self._counter = counter
        self.route = route
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._counter._add(self.route, -1)


class InFlight:
    """Requests in flight per route (the queue-depth gauge); `limit` caps their sum when asked to."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def total(self) -> int:
        return sum(self.counts.values())

    def _add(self, route: str, delta: int) -> None:
        self.counts[route] = self.counts.get(route, 0) + delta
        metrics.QUEUE_DEPTH.set(self.counts[route], tags={"route": route})

    def acquire(self, route: str, limit: int | None = None) -> Slot:
        """A slot for one request on `route`; `Overloaded` when `limit` requests are already in flight."""
        if limit is not None and self.total() >= limit:
            raise Overloaded(
                "too many requests in flight at this replica; retry shortly",
                code="overloaded",
                retry_after=str(OVERLOAD_RETRY_AFTER_S),
            )
        self._add(route, +1)
        return Slot(self, route)
