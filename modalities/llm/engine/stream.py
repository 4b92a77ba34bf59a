"""A request's state inside the batched engine, and `TokenStream`, the consumer's end of it.

The engine thread feeds each request's `out` queue with token ids, then an end marker or the
exception that failed it; the consumer's `TokenStream` blocks on that queue, checking every
`POLL_S` that the engine thread is still alive, so it never waits on a thread that is gone.

Cancelling (`TokenStream.cancel`, from any thread, also while another thread is blocked in
`next()`) marks the request cancelled and ends its stream at once; the engine removes a queued
request there and then, and lets go of a prefilling or decoding one at its next chunk or step.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Protocol

import torch

from modalities.errors import InputError
from modalities.llm.params import SamplingParams
from modalities.llm.sampling import AnswerSampler

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
    """One sequence's state; `out` carries token ids, then `_DONE` or an exception.

    Life: queued (in the engine's waiting line) → prefilling (holds a cache row; its prompt goes
    through in chunks) → decoding → released (the engine let go: `finish`). Only the engine thread
    changes the scheduling fields; the consumer only sets `cancelled` (under the engine's lock).
    """

    def __init__(self, embeds: torch.Tensor, sampler: AnswerSampler, max_new_tokens: int, eos: frozenset[int]):
        self.embeds: torch.Tensor | None = embeds
        self.prompt_length = embeds.shape[1]
        self.prefix_keys: list[str] | None = None  # the prompt's block keys while it is prefilled
        self.sampler: AnswerSampler | None = sampler
        self.params: SamplingParams = sampler.params
        self.isolated = sampler.params.batch_invariant  # decodes in forwards of its own
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = eos
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False  # set by the consumer; honoured by the engine between chunks and steps
        self.row = -1  # its cache row while prefilling or decoding
        self.started = False  # its prefill has begun (the prefix cache was consulted)
        self.reused = 0  # leading positions copied from the prefix cache
        self.length = 0  # positions cached (while prefilling: of the prompt, so far)
        self.produced = 0
        self.last_token: int | None = None
        self.done = False  # produced its last token; still holds its row until the engine drops it
        self.ended = False  # its stream has ended (`_DONE` or an error was queued)
        self.released = False  # the engine holds nothing of it any more

    @property
    def prefilled(self) -> bool:
        return self.started and self.length >= self.prompt_length

    def emit(self, token_id: int) -> None:
        """Hand a token to the consumer; the stream's end (`_DONE`) follows once the engine drops it."""
        self.produced += 1
        self.last_token = token_id
        if not self.ended:
            self.out.put(token_id)
        if token_id in self.eos_token_ids or self.produced >= self.max_new_tokens:
            self.done = True

    def refuse(self, error: BaseException) -> None:
        """The request cannot go on (its constraint gave up): its stream ends with `error` now, and
        the engine drops it at its next scheduling point like any finished request."""
        self.done = True
        self.end(error)

    def end(self, error: BaseException | None = None) -> None:
        """End the consumer's stream (once): `_DONE`, or the error that failed the request."""
        if not self.ended:
            self.ended = True
            self.out.put(_DONE if error is None else error)

    def finish(self, error: BaseException | None = None) -> None:
        """The engine lets go: the stream ends and the prompt (which may be large) is dropped."""
        self.released = True
        self.embeds = None
        self.prefix_keys = None
        self.sampler = None  # its grammar matcher and penalty counts go with it
        self.row = -1
        self.end(error)


class TokenStream(Iterator[int]):
    """The consumer's side of a request: blocks for each token; `cancel()`/`close()` (or dropping it) cancels."""

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
        if isinstance(item, InputError):  # the client's (a constraint that cannot be met): told as such
            self._closed = True
            raise item
        if isinstance(item, BaseException):
            self._closed = True
            raise EngineError(f"decoding failed: {item}") from item
        return item

    def ready(self) -> bool:
        """Whether `next()` would return without waiting (a token or the stream's end is queued)."""
        return not self._closed and not self._request.out.empty()

    @property
    def released(self) -> bool:
        """Whether the engine has let go of the request (a cancelled one holds its row until its next step)."""
        return self._request.released

    def cancel(self) -> None:
        """Stop the request, from any thread: its stream ends now (a `next()` blocked in another
        thread returns), a queued request leaves the engine now, a running one at its next chunk or step."""
        self._closed = True
        if not self._request.ended:
            self._engine.cancel(self._request)

    def close(self) -> None:
        self.cancel()

    def __del__(self) -> None:
        self.cancel()
