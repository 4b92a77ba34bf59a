"""Continuous batching: one engine thread decodes every active request in one forward per step.

`BatchedEngine` implements the `DecodeLoop` protocol, so `LLMRuntime.stream` uses it unchanged.
`run` enqueues a request and returns a `TokenStream` (a blocking iterator of token ids) fed by the
engine thread. Between steps the thread admits queued requests into free slots (the joining prompts
are prefilled together, packed into one sequence, straight into their slots) and drops finished or
cancelled ones, so requests join and leave a running batch; each step then decodes one token for
every active row. The model runs through our own forward (`forward.LlamaForward`, Llama-family
models) against a `slots.SlotCache`.

Prefix caching (`prefix.PrefixCache`, on when given memory): a joining prompt's longest prefix seen
before (the system prompt, a chat's earlier turns) has its K/V copied into its row from the cache,
and only the rest is prefilled; its new full blocks are kept for the prompts after it.

Failure: an exception in a step fails the requests involved in it (their iterators raise
`EngineError`) and the engine carries on with the queue; if the thread itself dies, every pending
and future request raises. Iterators never wait on a thread that is gone.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from modalities.llm.config import DEFAULT_MAX_SLOTS
from modalities.llm.engine.forward import LlamaForward
from modalities.llm.engine.prefix import PrefixCache
from modalities.llm.engine.slots import MIN_CAPACITY, SlotCache
from modalities.llm.engine.stream import EngineError, Request, TokenStream
from modalities.llm.params import SamplingParams
from modalities.llm.quant.memory import module_device
from modalities.llm.sampling import make_generator, sample_next_token

__all__ = ["BatchedEngine", "EngineError", "EngineStats", "TokenStream"]

log = logging.getLogger(__name__)

# Joining prompts are prefilled together up to this many tokens (a longer prompt goes alone): packing
# shares weight reads; the budget bounds a pack's activations and how long running streams wait for
# it. Prompts count in full, their cached prefixes included (a conservative bound: the prefix cache
# is consulted when the pack runs).
PREFILL_TOKEN_BUDGET = 1024
IDLE_EXIT_S = 60.0  # an idle engine thread ends after this long (it keeps the model alive)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine: rows decoding now, requests waiting, and counters since start."""

    active: int
    queued: int
    max_slots: int
    cache_capacity: int  # positions per row currently allocated (0 when idle)
    steps: int  # batched decode steps run
    completed: int  # requests that finished, were cancelled or failed
    prompt_tokens: int  # prompt positions prefilled or taken from the prefix cache
    prefix_hit_tokens: int  # of those, taken from the prefix cache (0 with the cache off)
    prefix_cache_bytes: int  # K/V held by the prefix cache now
    alive: bool  # False once the engine thread has died or the engine was closed (requests then fail)


class BatchedEngine:
    """Continuous-batching `DecodeLoop`: up to `max_slots` sequences decode together, the rest wait (FIFO).

    max_context: longest prompt + generation a slot holds (default: the model's max_position_embeddings).
    min_capacity: first cache length per row, doubled as needed up to max_context.
    prefix_cache_bytes: memory for K/V of prompt prefixes kept for reuse (`PrefixCache`); 0: none.
    on_step: called on the engine thread after every batched decode step with the current stats
    (tests use it to observe and pace the schedule). It must not call back into `run`; an exception
    from it ends the engine thread like any bug in the loop would.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_slots: int = DEFAULT_MAX_SLOTS,
        max_context: int | None = None,
        min_capacity: int = MIN_CAPACITY,
        prefix_cache_bytes: int = 0,
        on_step: Callable[[EngineStats], None] | None = None,
    ) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.forward = LlamaForward(model)
        self.max_slots = max_slots
        self.max_context = max_context or model.config.max_position_embeddings
        device = module_device(model.get_input_embeddings())
        self.cache = SlotCache(
            self.forward.num_layers,
            self.forward.num_kv_heads,
            self.forward.head_dim,
            max_rows=max_slots,
            max_length=self.max_context,
            dtype=self.forward.dtype,
            device=device,
            min_capacity=min(min_capacity, self.max_context),
        )
        self.prefix = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._on_step = on_step
        self._lock = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._active: list[Request] = []  # request i holds cache row i
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None  # why the engine thread died, if it did
        self._stopping = False
        self._steps = 0
        self._completed = 0
        self._prompt_tokens = 0
        self._prefix_hit_tokens = 0

    # --- DecodeLoop ----------------------------------------------------------------------------

    def run(
        self,
        inputs_embeds: torch.Tensor,
        params: SamplingParams,
        max_new_tokens: int,
        eos_token_ids: frozenset[int],
    ) -> TokenStream:
        """Enqueue one prompt `[1, L, H]` now; iterate the result for its token ids."""
        shape = tuple(inputs_embeds.shape)
        if len(shape) != 3 or shape[0] != 1 or shape[1] < 1:
            raise ValueError(f"inputs_embeds must be [1, L, H] with L >= 1, got {shape}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        # The last sampled token is never fed back, so its K/V needs no room.
        if shape[1] + max_new_tokens - 1 > self.max_context:
            raise ValueError(
                f"prompt {shape[1]} + {max_new_tokens} new tokens exceed the engine's context {self.max_context}"
            )
        request = Request(inputs_embeds.detach(), params, max_new_tokens, frozenset(eos_token_ids))
        with self._lock:
            if self.failure is not None or self._stopping:
                raise EngineError("the decode engine has stopped") from self.failure
            self._waiting.append(request)
            self._start_locked()
            self._lock.notify()
        return TokenStream(self, request)

    # --- control and introspection -------------------------------------------------------------

    def stats(self) -> EngineStats:
        with self._lock:
            return self._stats_locked()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the engine thread; requests still pending fail with `EngineError`."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _stats_locked(self) -> EngineStats:
        return EngineStats(
            active=len(self._active),
            queued=len(self._waiting),
            max_slots=self.max_slots,
            cache_capacity=self.cache.capacity,
            steps=self._steps,
            completed=self._completed,
            prompt_tokens=self._prompt_tokens,
            prefix_hit_tokens=self._prefix_hit_tokens,
            prefix_cache_bytes=0 if self.prefix is None else self.prefix.bytes,
            alive=self.failure is None and not self._stopping,
        )

    def thread_alive(self) -> bool:
        """Whether the engine thread is running (a `TokenStream` waiting on it gives up otherwise)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="chorus-decode-engine", daemon=True)
            self._thread.start()

    def cancel(self, request: Request) -> None:
        """Called by a closed `TokenStream`: a queued request leaves now, an active one before the next step."""
        with self._lock:
            request.cancelled = True
            if request in self._waiting:
                self._waiting.remove(request)
                request.finish()
                self._completed += 1
            self._lock.notify()

    # --- the engine thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            with torch.inference_mode():
                while self._iterate():
                    pass
        except BaseException as e:  # noqa: BLE001 - the thread must not die silently
            log.exception("decode engine thread died")
            with self._lock:
                self.failure = e
                self._fail_pending_locked(e)
            return
        with self._lock:
            if self._stopping:
                self._fail_pending_locked(EngineError("the decode engine was closed"))

    def _fail_pending_locked(self, error: BaseException) -> None:
        for request in [*self._active, *self._waiting]:
            request.finish(error)
        self._active.clear()
        self._waiting.clear()
        self.cache.release()

    def _iterate(self) -> bool:
        """One scheduling round: drop leavers, admit joiners (prefill), one batched step. False: stop."""
        with self._lock:
            if not self._active and not self._waiting:
                self.cache.release()  # idle: give the memory back
            while not self._active and not self._waiting and not self._stopping:
                if not self._lock.wait(IDLE_EXIT_S) and not (self._active or self._waiting or self._stopping):
                    # Idle: end the thread (it holds the model alive); the next run() starts a new one.
                    self._thread = None
                    return False
            if self._stopping:
                return False
            self._drop_finished_locked()
            joining = []
            while self._waiting and len(self._active) + len(joining) < self.max_slots:
                joining.append(self._waiting.popleft())
        if joining:
            self._admit(joining)
        with self._lock:
            self._drop_finished_locked()
            if not self._active:
                return True
        if self._step():
            with self._lock:
                self._steps += 1
                stats = self._stats_locked()
            if self._on_step is not None:
                self._on_step(stats)
        return True

    def _admit(self, joining: list[Request]) -> None:
        """Prefill joining requests (packed up to PREFILL_TOKEN_BUDGET tokens) and emit first tokens."""
        pack: list[Request] = []
        for request in joining:
            if pack and sum(r.embeds.shape[1] for r in pack) + request.embeds.shape[1] > PREFILL_TOKEN_BUDGET:
                self._prefill(pack)
                pack = []
            pack.append(request)
        if pack:
            self._prefill(pack)

    def _prefill(self, pack: list[Request]) -> None:
        first_row = len(self._active)
        try:
            self.cache.reserve(first_row + len(pack), max(r.embeds.shape[1] for r in pack))
            cached = [self._reuse_prefix(request, first_row + i) for i, request in enumerate(pack)]
            logits = self.forward.prefill([r.embeds[:, n:] for r, n in zip(pack, cached)], self.cache, first_row, cached)
            for row, (request, past) in enumerate(zip(pack, cached)):
                self._keep_prefix(request, first_row + row, past)
            tokens = []
            for row, request in enumerate(pack):
                request.generator = make_generator(request.params, logits.device)
                tokens.append(int(sample_next_token(logits[row], request.params, request.generator)))
        except Exception as e:  # noqa: BLE001 - these requests fail, the running ones go on
            log.exception("prefill failed")
            with self._lock:
                for request in pack:
                    request.finish(e)
                self._completed += len(pack)
            return
        for request, token in zip(pack, tokens):
            request.length = request.embeds.shape[1]
            request.embeds = None  # in the cache now; a long multimodal prompt need not stay around
            request.prefix_keys = None
            request.emit(token)
        with self._lock:
            self._active.extend(pack)
            self._prompt_tokens += sum(r.length for r in pack)
            self._prefix_hit_tokens += sum(cached)

    def _reuse_prefix(self, request: Request, row: int) -> int:
        """Copy the request's longest cached prefix into its cache row; returns its length (0: none)."""
        if self.prefix is None:
            return 0
        request.prefix_keys = self.prefix.keys(request.embeds)
        blocks = self.prefix.lookup(request.prefix_keys, request.embeds.shape[1])
        if not blocks:
            return 0
        self.cache.write(row, blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=3))
        return len(blocks) * self.prefix.block_tokens

    def _keep_prefix(self, request: Request, row: int, past: int) -> None:
        """Offer the prompt's full blocks past the reused prefix to the prefix cache."""
        if self.prefix is None or len(request.prefix_keys) * self.prefix.block_tokens <= past:
            return
        first = past // self.prefix.block_tokens
        kv = self.cache.read(row, past, len(request.prefix_keys) * self.prefix.block_tokens)
        self.prefix.store(request.prefix_keys, first, kv)

    def _step(self) -> bool:
        """Decode one token for every active row; returns False if there was nothing to do."""
        active = self._active  # only this thread changes the list's membership
        if not active:
            return False
        try:
            lengths = [r.length for r in active]
            span = max(lengths) + 1
            self.cache.reserve(len(active), span)
            device = self.cache.keys[0].device
            tokens = torch.tensor([r.last_token for r in active], dtype=torch.long, device=device)
            positions = torch.tensor(lengths, dtype=torch.long, device=device)
            logits = self.forward.decode(tokens, positions, span, self.cache)
            chosen = _sample_rows(logits, active)
        except Exception as e:  # noqa: BLE001 - fail this batch, keep serving the queue
            log.exception("decode step failed")
            with self._lock:
                for request in active:
                    request.finish(e)
                self._completed += len(active)
                self._active.clear()
                self.cache.release()
            return False
        for request, token in zip(active, chosen):
            request.length += 1
            if not request.cancelled:
                request.emit(token)
        with self._lock:  # leavers go before anyone sees their end, so stats never lag a finished stream
            self._drop_finished_locked()
        return True

    def _drop_finished_locked(self) -> None:
        """Remove finished/cancelled requests, keeping the rest in rows 0..B-1 (last row moves down)."""
        index = 0
        while index < len(self._active):
            request = self._active[index]
            if not (request.done or request.cancelled or request.finished):
                index += 1
                continue
            last = self._active.pop()
            if last is not request:
                self.cache.move(len(self._active), index, last.length)
                self._active[index] = last
            request.finish()
            self._completed += 1


def _sample_rows(logits: torch.Tensor, requests: list[Request]) -> list[int]:
    """Next token per row `[B, V]`: greedy rows with one argmax, others with their own generator."""
    chosen = torch.argmax(logits, dim=-1)
    for row, request in enumerate(requests):
        if not request.params.greedy:
            chosen[row] = sample_next_token(logits[row], request.params, request.generator)
    return chosen.tolist()  # the one host sync per step
