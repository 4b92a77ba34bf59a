"""A request's state inside the batched engine, and `TokenStream`, the consumer's end of it.

The engine thread feeds each request's `out` queue with token ids, then an end marker or the
exception that failed it; the consumer's `TokenStream` blocks on that queue, checking every
`POLL_S` that the engine thread is still alive, so it never waits on a thread that is gone.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Protocol

import torch

from modalities.llm.params import SamplingParams

__all__ = ["EngineError", "Request", "StreamSource", "TokenStream"]

POLL_S = 1.0  # how often a waiting iterator checks that the engine thread is still alive
_DONE = object()  # end-of-stream marker in a request's output queue


class EngineError(RuntimeError):
    """The decode engine could not finish a request (the cause is chained)."""


class StreamSource(Protocol):
    """What a `TokenStream` needs from its engine."""

    failure: BaseException | None  # why the engine thread died, if it did

    def thread_alive(self) -> bool: ...

    def cancel(self, request: Request) -> None: ...


class Request:
    """One sequence's state; `out` carries token ids, then `_DONE` or an exception."""

    def __init__(self, embeds: torch.Tensor, params: SamplingParams, max_new_tokens: int, eos: frozenset[int]):
        self.embeds = embeds
        self.prefix_keys: list[str] | None = None  # the prompt's block keys while it is prefilled
        self.params = params
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = eos
        self.generator: torch.Generator | None = None
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False  # set by the consumer; honoured by the engine between steps
        self.length = 0  # positions cached
        self.produced = 0
        self.last_token: int | None = None
        self.done = False  # produced its last token; still holds its row until the engine drops it
        self.finished = False  # its stream has ended (`_DONE` or an error was queued)

    def emit(self, token_id: int) -> None:
        """Hand a token to the consumer; the stream's end (`_DONE`) follows once the engine drops it."""
        self.produced += 1
        self.last_token = token_id
        self.out.put(token_id)
        if token_id in self.eos_token_ids or self.produced >= self.max_new_tokens:
            self.done = True

    def finish(self, error: BaseException | None = None) -> None:
        if not self.finished:
            self.finished = True
            self.embeds = None  # the prompt may be large; don't keep it past prefill
            self.out.put(_DONE if error is None else error)


class TokenStream(Iterator[int]):
    """The consumer's side of a request: blocks for each token; `close()` (or dropping it) cancels."""

    def __init__(self, engine: StreamSource, request: Request) -> None:
        self._engine = engine
        self._request = request
        self._closed = False

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        if self._closed:
            raise StopIteration
        while True:
            try:
                item = self._request.out.get(timeout=POLL_S)
                break
            except queue.Empty:
                if not self._engine.thread_alive():  # nothing will ever come: don't wait forever
                    self._closed = True
                    raise EngineError("the decode engine thread is not running") from self._engine.failure
        if item is _DONE:
            self._closed = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._closed = True
            raise EngineError(f"decoding failed: {item}") from item
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.cancel(self._request)

    def __del__(self) -> None:
        self.close()
