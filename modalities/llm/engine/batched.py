"""Continuous batching: one engine thread decodes every active request in one forward per step.

`BatchedEngine` implements the `DecodeLoop` protocol, so `LLMRuntime.stream` uses it unchanged.
`run` enqueues a request and returns a `TokenStream` (a blocking iterator of token ids) fed by the
engine thread. A request waits in a FIFO line until a slot (a cache row) is free, is then prefilled
in chunks, then decodes one token per step until it ends or is cancelled; requests join and leave a
running batch. The model runs through our own forward (`forward.LlamaForward`, Llama-family
models) against a `slots.SlotCache`.

One scheduling round (`_iterate`): drop the finished and cancelled requests, give free rows to the
waiting line, run one prefill forward (the next chunks of the prompts being prefilled, in order, at
most PREFILL_TOKEN_BUDGET tokens: short prompts are packed together, a long one is cut into chunks
whose K/V fill its row chunk by chunk), then one batched decode step for every active row. So a long
prompt never holds the running streams for more than one chunk, and a cancelled request stops at
the next chunk boundary or step; one still waiting is removed by `cancel` itself, so it is never
prefilled.

Prefix caching (`prefix.PrefixCache`, on when given memory): a joining prompt's longest prefix seen
before (the system prompt, a chat's earlier turns) has its K/V copied into its row from the cache,
and only the rest is prefilled; its new full blocks are kept for the prompts after it.

Memory: a request's prompt embeddings are dropped when its prefill ends (or it is cancelled); the
cache shrinks when the remaining rows need a quarter of it or less and is released when the engine
goes idle, and glibc's free heap pages go back to the OS then and after a long prompt has left
(`heap.trim_heap`).

Failure: an exception in a step fails the requests involved in it (their iterators raise
`EngineError`) and the engine carries on with the queue; if the thread itself dies, every pending
and future request raises. Iterators never wait on a thread that is gone.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable

import torch
from torch import nn

from modalities.heap import trim_heap
from modalities.llm.config import DEFAULT_MAX_SLOTS
from modalities.llm.engine.contracts import EngineStats, Forward
from modalities.llm.engine.forward import LlamaForward
from modalities.llm.engine.prefix import PrefixCache
from modalities.llm.engine.rows import choose, decode_groups, sample_rows
from modalities.llm.engine.slots import MIN_CAPACITY, SlotCache
from modalities.llm.engine.stream import EngineError, Request, TokenStream
from modalities.llm.params import SamplingParams
from modalities.llm.sampling import AnswerSampler

__all__ = ["BatchedEngine", "EngineError", "EngineStats", "Forward", "TokenStream"]

log = logging.getLogger(__name__)

# One prefill forward computes at most this many prompt positions: the joining prompts packed
# together, a longer one in chunks. Packing shares weight reads; the budget bounds a forward's
# activations and how long running streams (and a cancellation) wait for it.
PREFILL_TOKEN_BUDGET = 1024
# A prompt at least this long hands the C heap's free pages back to the OS when it leaves the engine
# (prefilled or cancelled): its embeddings, activations and (once the cache shrinks) K/V were large.
TRIM_PROMPT_TOKENS = 1024
IDLE_EXIT_S = 60.0  # an idle engine thread ends after this long (it keeps the model alive)


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
        model: nn.Module | Forward,
        *,
        max_slots: int = DEFAULT_MAX_SLOTS,
        max_context: int | None = None,
        min_capacity: int = MIN_CAPACITY,
        prefix_cache_bytes: int = 0,
        on_step: Callable[[EngineStats], None] | None = None,
    ) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.forward: Forward = LlamaForward(model) if isinstance(model, nn.Module) else model
        self.max_slots = max_slots
        self.max_context = max_context or self.forward.max_positions
        device = self.forward.device
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
        # Rows: active request i holds cache row i, prefilling request j row len(_active) + j.
        # Only the engine thread changes _active and _prefilling; `cancel` may take from _waiting.
        self._waiting: deque[Request] = deque()
        self._prefilling: list[Request] = []
        self._active: list[Request] = []
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None  # why the engine thread died, if it did
        self._stopping = False
        self._trim = False  # hand free heap pages back to the OS at the next chance (engine thread only)
        self._steps = 0
        self._chunks = 0
        self._completed = 0
        self._cancelled = 0
        self._prompt_tokens = 0
        self._prefix_hit_tokens = 0
        # A live engine thread at interpreter exit can abort the process (ONNX Runtime's teardown
        # then finds it mid-wait: "terminate called without an active exception"): stop it first.
        atexit.register(_close_at_exit, weakref.ref(self))

    # --- DecodeLoop ----------------------------------------------------------------------------

    def run(
        self,
        inputs_embeds: torch.Tensor,
        params: SamplingParams | AnswerSampler,
        max_new_tokens: int,
        eos_token_ids: frozenset[int],
    ) -> TokenStream:
        """Enqueue one prompt `[1, L, H]` now; iterate the result for its token ids. `params` may be an
        `AnswerSampler` (a constraint's matcher, penalties, logprobs); plain parameters get one here."""
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
        sampler = params if isinstance(params, AnswerSampler) else AnswerSampler(params)
        request = Request(inputs_embeds.detach(), sampler, max_new_tokens, frozenset(eos_token_ids))
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
            prefilling=len(self._prefilling),
            queued=len(self._waiting),
            running=len(self._active) + len(self._prefilling),
            max_slots=self.max_slots,
            cache_capacity=self.cache.capacity,
            cache_bytes=self.cache.nbytes(),
            steps=self._steps,
            prefill_chunks=self._chunks,
            completed=self._completed,
            cancelled=self._cancelled,
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
        """Called by a cancelled `TokenStream`, from any thread, without waiting for the engine: the
        stream ends now; a queued request leaves now (never prefilled), a prefilling or decoding one
        at the engine's next chunk boundary or step."""
        with self._lock:
            if request.ended:
                return
            request.cancelled = True
            if not request.done:
                self._cancelled += 1
            if request in self._waiting:
                self._waiting.remove(request)
                self._release_locked(request)
            else:
                request.end()  # the consumer's `next()` returns now, whatever the engine is doing
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
        for request in [*self._active, *self._prefilling, *self._waiting]:
            request.finish(error)
        self._active.clear()
        self._prefilling.clear()
        self._waiting.clear()
        self.cache.release()

    def _has_work_locked(self) -> bool:
        return bool(self._active or self._prefilling or self._waiting)

    def _iterate(self) -> bool:
        """One scheduling round: drop leavers, admit joiners, one prefill chunk, one batched step. False: stop."""
        with self._lock:
            self._drop_finished_locked()
            if not self._has_work_locked() and self.cache.rows:
                self.cache.release()  # idle: give the memory back
                self._trim = True
        self._trim_heap_if_due()
        with self._lock:
            while not self._has_work_locked() and not self._stopping:
                if not self._lock.wait(IDLE_EXIT_S) and not (self._has_work_locked() or self._stopping):
                    # Idle: end the thread (it holds the model alive); the next run() starts a new one.
                    self._thread = None
                    return False
            if self._stopping:
                return False
            self._drop_finished_locked()
            while self._waiting and len(self._active) + len(self._prefilling) < self.max_slots:
                request = self._waiting.popleft()
                request.row = len(self._active) + len(self._prefilling)
                self._prefilling.append(request)
        if self._prefilling:
            self._prefill_chunk()
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

    def _trim_heap_if_due(self) -> None:
        if self._trim:
            self._trim = False
            trim_heap()

    def _prefill_chunk(self) -> None:
        """One prefill forward over the next chunks of the prefilling prompts, in order, at most
        PREFILL_TOKEN_BUDGET positions; a prompt whose last chunk ran gets its first token and joins
        the decoding rows. Only the last prompt of a pack can be left part-way."""
        pack: list[tuple[Request, int]] = []  # (request, positions computed in this forward)
        budget = PREFILL_TOKEN_BUDGET
        hits = 0
        try:
            for request in self._prefilling:
                if budget <= 0 or (pack and (request.isolated or pack[0][0].isolated)):
                    break  # a seeded prompt is prefilled alone: its numbers never depend on a neighbour
                pack.append((request, 0))
                if not request.started:
                    self.cache.reserve(request.row + 1, request.prompt_length)
                    hits += self._start_prefill(request)
                count = min(request.prompt_length - request.length, budget)
                pack[-1] = (request, count)
                budget -= count
            first_row = pack[0][0].row
            self.cache.reserve(first_row + len(pack), max(r.length + n for r, n in pack))
            chunks = [r.embeds[:, r.length : r.length + n] for r, n in pack]
            logits = self.forward.prefill(chunks, self.cache, first_row, [r.length for r, _ in pack])
            tokens: list[int] = []
            for row, (request, count) in enumerate(pack):
                request.length += count
                if not request.prefilled:
                    break
                self._keep_prefix(request)
                request.sampler.start(logits.device, request.max_new_tokens)
                tokens.append(choose(request, logits[row]))
        except Exception as e:  # noqa: BLE001 - these requests fail, the running ones go on
            log.exception("prefill failed")
            with self._lock:
                failed = {id(r) for r, _ in pack}
                for request, _ in pack:
                    request.finish(e)
                    self._completed += 1
                self._prefilling[:] = [r for r in self._prefilling if id(r) not in failed]
                self._drop_finished_locked()
            return
        with self._lock:
            self._chunks += 1
            self._prompt_tokens += hits + sum(n for _, n in pack)
            self._prefix_hit_tokens += hits
            for (request, _), token in zip(pack, tokens):
                assert self._prefilling[0] is request and request.row == len(self._active), "prefill rows out of order"
                self._prefilling.pop(0)
                self._active.append(request)
                request.embeds = None  # in the cache now; a long multimodal prompt need not stay around
                request.prefix_keys = None
                if request.prompt_length >= TRIM_PROMPT_TOKENS:
                    self._trim = True
                if token is not None:  # None: refused by its constraint, dropped before the next step
                    request.emit(token)

    def _start_prefill(self, request: Request) -> int:
        """Begin a request's prefill: its cached prefix (if any) goes into its row; returns its length."""
        request.started = True
        request.reused = request.length = self._reuse_prefix(request)
        return request.reused

    def _reuse_prefix(self, request: Request) -> int:
        """Copy the request's longest cached prefix into its cache row; returns its length (0: none)."""
        if self.prefix is None:
            return 0
        request.prefix_keys = self.prefix.keys(request.embeds)
        if request.isolated:  # computed afresh, so its answer cannot depend on what came before it
            return 0
        blocks = self.prefix.lookup(request.prefix_keys, request.prompt_length)
        if not blocks:
            return 0
        self.cache.write(request.row, blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=3))
        return len(blocks) * self.prefix.block_tokens

    def _keep_prefix(self, request: Request) -> None:
        """Offer the prompt's full blocks past the reused prefix to the prefix cache."""
        past = request.reused
        if self.prefix is None or len(request.prefix_keys) * self.prefix.block_tokens <= past:
            return
        first = past // self.prefix.block_tokens
        kv = self.cache.read(request.row, past, len(request.prefix_keys) * self.prefix.block_tokens)
        self.prefix.store(request.prefix_keys, first, kv)

    def _step(self) -> bool:
        """Decode one token for every active row; returns False if there was nothing to do."""
        active = self._active  # only this thread changes the list's membership
        if not active:
            return False
        try:
            self.cache.reserve(len(active), max(r.length for r in active) + 1)
            groups = decode_groups(active)
            if len(groups) == 1:
                logits = self._decode_rows(active, 0, len(active))
            else:  # a forward's logits may live in a buffer the next forward reuses (ONNX): copied
                logits = torch.cat([self._decode_rows(active, first, count).clone() for first, count in groups])
            chosen = sample_rows(logits, active)
        except Exception as e:  # noqa: BLE001 - fail this batch, keep serving the queue
            log.exception("decode step failed")
            with self._lock:
                for request in active:
                    request.finish(e)
                self._completed += len(active)
                self._active.clear()
                if self._prefilling:
                    self._drop_finished_locked()  # the prefilling rows move down to row 0
                else:
                    self.cache.release()
            return False
        for request, token in zip(active, chosen):
            if token is None:  # refused by its constraint: its stream has ended with the error
                continue
            request.length += 1
            request.emit(token)  # a cancelled request's stream has ended: nothing reaches it
        with self._lock:  # leavers go before anyone sees their end, so stats never lag a finished stream
            self._drop_finished_locked()
        return True

    def _decode_rows(self, active: list[Request], first: int, count: int) -> torch.Tensor:
        """One decode forward over rows `first..first+count-1`: `[count, V]` logits."""
        rows = active[first : first + count]
        lengths = [r.length for r in rows]
        device = self.cache.keys[0].device
        tokens = torch.tensor([r.last_token for r in rows], dtype=torch.long, device=device)
        positions = torch.tensor(lengths, dtype=torch.long, device=device)
        return self.forward.decode(tokens, positions, max(lengths) + 1, self.cache, first)

    def _release_locked(self, request: Request) -> None:
        """The engine lets go of a request: its stream ends, its prompt is dropped."""
        if request.started and request.prompt_length >= TRIM_PROMPT_TOKENS:
            self._trim = True
        request.finish()
        self._completed += 1

    def _drop_finished_locked(self) -> None:
        """Remove finished/cancelled requests and keep the rest in rows 0..N-1: decoding rows first
        (a leaver's row takes the last one), then the prefilling ones in order (moved down)."""
        dropped = False
        index = 0
        while index < len(self._active):
            request = self._active[index]
            if not (request.done or request.cancelled or request.released):
                index += 1
                continue
            last = self._active.pop()
            if last is not request:
                self.cache.move(last.row, index, last.length)
                last.row = index
                self._active[index] = last
            self._release_locked(request)
            dropped = True
        kept: list[Request] = []
        for request in self._prefilling:
            if request.cancelled or request.released:
                self._release_locked(request)
                dropped = True
                continue
            row = len(self._active) + len(kept)
            if request.row != row:
                if request.length:
                    self.cache.move(request.row, row, request.length)
                request.row = row
            kept.append(request)
        self._prefilling[:] = kept
        if dropped:
            self._shrink_cache_locked()

    def _shrink_cache_locked(self) -> None:
        """After requests left: a cache grown for a long prompt shrinks to what the others need."""
        rows = len(self._active) + len(self._prefilling)
        length = max(
            [r.length + 1 for r in self._active] + [r.prompt_length for r in self._prefilling if r.started], default=0
        )
        if self.cache.shrink(rows, length):
            self._trim = True


def _close_at_exit(engine_ref: weakref.ref) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.close(timeout=5.0)
