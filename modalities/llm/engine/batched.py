"""Continuous batching: one engine thread decodes every active request in one forward per step.

`BatchedEngine` implements the `DecodeLoop` protocol, so `LLMRuntime.stream` uses it unchanged.
`run` enqueues a request and returns a `TokenStream` (a blocking iterator of token ids) fed by the
engine thread. Between steps the thread admits queued requests into free slots (the joining prompts
are prefilled together, packed into one sequence, straight into their slots) and drops finished or cancelled ones, so
requests join and leave a running batch; each step then decodes one token for every active row.

The forward is our own (`LlamaForward`), written for Llama-family models: it runs the HF model's
own weights and submodules (embedding, norms, q/k/v/o projections, MLP, head, rotary embedding) and
skips transformers' generic per-call machinery (masks, cache objects, output dataclasses, kwargs
plumbing). Linears go through `llm_quant.fast_linear` (int4 layers call the kernel directly,
without tensor-subclass dispatch or cast hooks; anything else is called as a module, hooks and
all), Llama's RMSNorm is one `F.rms_norm`. Unsupported architectures
are refused with a `ValueError` (use the eager loop for those).

Prefix caching (`llm_prefix.PrefixCache`, on when given memory): a joining prompt's longest
prefix seen before (the system prompt, a chat's earlier turns) has its K/V copied into its row from
the cache, and only the rest is prefilled; its new full blocks are kept for the prompts after it.

KV cache (`SlotCache`): per layer, K and V are `[rows, kv_heads, capacity, head_dim]`. Active
requests always occupy rows `0..B-1` (a leaving request's row is refilled by moving the last one),
so a step attends over plain slices, no gather. Rows and capacity grow by doubling (capacity up to
the context limit); the cache is dropped when the engine goes idle.

Failure: an exception in a step fails the requests involved in it (their iterators raise
`EngineError`) and the engine carries on with the queue; if the thread itself dies, every pending
and future request raises. Iterators never wait on a thread that is gone.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modalities.llm.config import DEFAULT_MAX_SLOTS, SUPPORTED_ARCHITECTURES
from modalities.llm.engine.prefix import PrefixCache
from modalities.llm.quant.core import compute_dtype, fast_linear, fast_linears, module_device
from modalities.llm.sampling import SamplingParams, make_generator, sample_next_token

__all__ = ["BatchedEngine", "EngineError", "EngineStats", "LlamaForward", "SlotCache", "TokenStream"]

log = logging.getLogger(__name__)

MIN_CAPACITY = 256  # first cache length per row; doubled as sequences grow (never the full context upfront)
# RoPE variants whose inverse frequencies do not depend on the sequence length (so one table serves
# rows at different positions); "dynamic" and friends rescale with the longest sequence seen.
STATIC_ROPE_TYPES = ("default", "linear", "llama3")
# Joining prompts are prefilled together up to this many tokens (a longer prompt goes alone): packing
# shares weight reads; the budget bounds a pack's activations and how long running streams wait for
# it. Prompts count in full, their cached prefixes included (a conservative bound: the prefix cache
# is consulted when the pack runs).
PREFILL_TOKEN_BUDGET = 1024
POLL_S = 1.0  # how often a waiting iterator checks that the engine thread is still alive
IDLE_EXIT_S = 60.0  # an idle engine thread ends after this long (it keeps the model alive)
_DONE = object()  # end-of-stream marker in a request's output queue


class EngineError(RuntimeError):
    """The decode engine could not finish a request (the cause is chained)."""


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


# --- the forward ---------------------------------------------------------------------------------


class LlamaForward:
    """Prefill and batched decode for a Llama-architecture `*ForCausalLM`, reusing its modules."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"the batched engine supports model types {SUPPORTED_ARCHITECTURES}, not {model_type!r}; "
                "use engine 'eager' for this model"
            )
        body = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if body is None or not all(hasattr(body, name) for name in needed) or not hasattr(model, "lm_head"):
            raise ValueError(f"{type(model).__name__} does not have the Llama module layout the batched engine needs")
        rope_type = getattr(body.rotary_emb, "rope_type", "default")
        if rope_type not in STATIC_ROPE_TYPES:
            raise ValueError(f"the batched engine supports RoPE types {STATIC_ROPE_TYPES}, not {rope_type!r}")
        self.embed_tokens = body.embed_tokens
        self.rotary_emb = body.rotary_emb
        self.dtype = dtype = compute_dtype(model)  # the activations' (a stored weight's may differ)
        self.norm = _fast_norm(body.norm, dtype)
        self.lm_head = fast_linear(model.lm_head)
        self.layers = [
            (
                _fast_norm(layer.input_layernorm, dtype),
                fast_linears([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                fast_linear(layer.self_attn.o_proj),
                _fast_norm(layer.post_attention_layernorm, dtype),
                _fast_mlp(layer.mlp),
            )
            for layer in body.layers[: config.num_hidden_layers]
        ]
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scale = body.layers[0].self_attn.scaling
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads} query heads are not a multiple of {self.num_kv_heads} KV heads")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def prefill(
        self, prompts: list[torch.Tensor], cache: "SlotCache", first_row: int, cached: list[int] | None = None
    ) -> torch.Tensor:
        """Run prompts (each `[1, L_i, H]`) packed into one sequence; prompt i's K/V go to cache row
        `first_row + i` at positions `cached[i]..cached[i]+L_i-1`, after the `cached[i]` positions
        of its prefix already in that row (the prefix cache put them there; default: none).

        Packing shares each weight read between the prompts (the linears see one `[N, H]` matrix);
        attention runs per prompt, so prompts never see each other, and a prompt's attention is the
        one it gets alone: the plain causal kernel without a cached prefix, else its new positions
        against the row's cached and new K/V under a causal mask. (A block-diagonal mask over the
        packed sequence did the same in one call at 3.5x the time for 8 x 42 tokens: the kernel
        computes every masked block.) Returns `[k, V]` logits for the position after each prompt
        (only those positions reach the head).
        """
        lengths = [p.shape[1] for p in prompts]
        cached = cached or [0] * len(prompts)
        total = sum(lengths)
        device = prompts[0].device
        x = torch.cat(prompts, dim=1) if len(prompts) > 1 else prompts[0]
        positions = torch.cat([torch.arange(c, c + n, device=device) for c, n in zip(cached, lengths)]).unsqueeze(0)
        cos, sin = _rope_tables(*self.rotary_emb(x, positions))  # [1, 1, N, D]: broadcast over heads
        starts = [sum(lengths[:i]) for i in range(len(prompts))]
        spans = [
            _Span(start, length, first_row + i, past, _prefix_mask(past, length, device) if past else None)
            for i, (start, length, past) in enumerate(zip(starts, lengths, cached))
        ]
        for index, (ln1, qkv, o_proj, ln2, mlp) in enumerate(self.layers):
            q, k, v = qkv(ln1(x))
            q = _rope(q.view(1, total, self.num_heads, self.head_dim).transpose(1, 2), cos, sin)
            k = _rope(k.view(1, total, self.num_kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            v = v.view(1, total, self.num_kv_heads, self.head_dim).transpose(1, 2)
            keys, values = cache.keys[index], cache.values[index]
            for span in spans:
                keys[span.row, :, span.past : span.end] = k[0, :, span.start : span.start + span.length]
                values[span.row, :, span.past : span.end] = v[0, :, span.start : span.start + span.length]
            parts = [self._attention(q, k, v, keys, values, span) for span in spans]
            attn = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
            x = x + o_proj(attn.transpose(1, 2).reshape(1, total, -1))
            x = x + mlp(ln2(x))
        last = torch.tensor([start + length - 1 for start, length in zip(starts, lengths)], device=device)
        return self.lm_head(self.norm(x[0, last]))

    def _attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, span: "_Span"
    ) -> torch.Tensor:
        """One prompt's causal attention: its slice of the packed `[1, heads, N, D]` q/k/v, or, after
        a cached prefix, its queries against its cache row (prefix and new positions, masked)."""
        query = q[:, :, span.start : span.start + span.length]
        if not span.past:
            end = span.start + span.length
            return F.scaled_dot_product_attention(
                query, k[:, :, span.start : end], v[:, :, span.start : end], is_causal=True, scale=self.scale, enable_gqa=True
            )
        row = slice(span.row, span.row + 1)
        return F.scaled_dot_product_attention(
            query, keys[row, :, : span.end], values[row, :, : span.end], attn_mask=span.mask, scale=self.scale, enable_gqa=True
        )

    def decode(self, token_ids: torch.Tensor, positions: torch.Tensor, span: int, cache: "SlotCache") -> torch.Tensor:
        """One token for each of the first B cache rows.

        token_ids, positions: `[B]` long; row b's token sits at `positions[b]` (= its cached length).
        span: `max(positions) + 1`, the cache length attended (a Python int: no host sync here).
        Returns `[B, V]` logits.
        """
        batch = token_ids.shape[0]
        x = self.embed_tokens(token_ids).unsqueeze(1)  # [B, 1, H]
        cos, sin = _rope_tables(*self.rotary_emb(x, positions.unsqueeze(1)))  # [B, 1, 1, D]
        rows = torch.arange(batch, device=token_ids.device)
        # Row b sees its own cached positions 0..positions[b] and nothing past them.
        mask = (torch.arange(span, device=token_ids.device) <= positions.unsqueeze(1)).view(batch, 1, 1, span)
        for index, (ln1, qkv, o_proj, ln2, mlp) in enumerate(self.layers):
            q, k, v = qkv(ln1(x))
            q = _rope(q.view(batch, 1, self.num_heads, self.head_dim).transpose(1, 2), cos, sin)
            k = _rope(k.view(batch, 1, self.num_kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            v = v.view(batch, self.num_kv_heads, self.head_dim)
            keys, values = cache.keys[index], cache.values[index]
            keys[rows, :, positions] = k[:, :, 0]
            values[rows, :, positions] = v
            attn = F.scaled_dot_product_attention(
                q, keys[:batch, :, :span], values[:batch, :, :span], attn_mask=mask, scale=self.scale, enable_gqa=True
            )
            x = x + o_proj(attn.transpose(1, 2).reshape(batch, 1, -1))
            x = x + mlp(ln2(x))
        return self.lm_head(self.norm(x[:, 0]))


def _fast_norm(module: nn.Module, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """HF's Llama RMSNorm as one `F.rms_norm` call (float32 activations: the same arithmetic, equal
    bit for bit where we compared, in one call instead of seven); any other norm, dtype or a hooked
    module is called as is.
    """
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    plain = not (module._forward_hooks or module._forward_pre_hooks)
    if type(module).__name__ != "LlamaRMSNorm" or not plain or eps is None or dtype != torch.float32:
        return module
    if weight is None or weight.dtype != torch.float32:
        return module
    shape = (weight.shape[-1],)
    return lambda x: F.rms_norm(x, shape, weight, eps)


def _fast_mlp(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The gated MLP `down(act(gate(x)) * up(x))` over `fast_linear`s (the module itself if it isn't one)."""
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    if not all(hasattr(module, name) for name in parts) or module._forward_hooks or module._forward_pre_hooks:
        return module
    gate_up, down = fast_linears([module.gate_proj, module.up_proj]), fast_linear(module.down_proj)
    act = module.act_fn

    def mlp(x: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up(x)
        return down(act(gate) * up)

    return mlp


def _rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for `_rope`, made once per forward: a head axis to broadcast over, and sin with
    the first half negated (HF's rotate_half sign, moved onto the table)."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.unsqueeze(-3), signed.unsqueeze(-3)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, HF's convention: x*cos + rotate_half(x)*sin, where rotate_half(x)
    = cat(-x2, x1) = roll(x, half) with the first half negated: the sign lives in `signed_sin`
    (exact: negation commutes with the product), so it is 4 ops instead of 7 on each call."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


@dataclass(frozen=True)
class _Span:
    """One prompt in a packed prefill: its new positions' place in the pack, its cache row, and the
    length of its cached prefix (`past`) with the mask its queries attend under then."""

    start: int
    length: int
    row: int
    past: int
    mask: torch.Tensor | None

    @property
    def end(self) -> int:
        return self.past + self.length


def _prefix_mask(past: int, length: int, device: torch.device) -> torch.Tensor:
    """`[length, past + length]`: new position i (at past + i) sees positions 0..past + i."""
    return torch.arange(past + length, device=device) <= torch.arange(past, past + length, device=device).unsqueeze(1)


# --- the KV cache --------------------------------------------------------------------------------


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


def _grow(current: int, needed: int, limit: int, start: int) -> int:
    size = max(current, start)
    while size < needed:
        size *= 2
    return min(size, limit)


# --- requests and streams ------------------------------------------------------------------------


class _Request:
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

    def __init__(self, engine: "BatchedEngine", request: _Request) -> None:
        self._engine = engine
        self._request = request
        self._closed = False

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> int:
        if self._closed:
            raise StopIteration
        while True:
            try:
                item = self._request.out.get(timeout=POLL_S)
                break
            except queue.Empty:
                if not self._engine._thread_alive():  # nothing will ever come: don't wait forever
                    self._closed = True
                    raise EngineError("the decode engine thread is not running") from self._engine._failure
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
            self._engine._cancel(self._request)

    def __del__(self) -> None:
        self.close()


# --- the engine ----------------------------------------------------------------------------------


class BatchedEngine:
    """Continuous-batching `DecodeLoop`: up to `max_slots` sequences decode together, the rest wait (FIFO).

    max_context: longest prompt + generation a slot holds (default: the model's max_position_embeddings).
    min_capacity: first cache length per row, doubled as needed up to max_context.
    prefix_cache_bytes: memory for K/V of prompt prefixes kept for reuse (`llm_prefix`); 0: none.
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
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []  # request i holds cache row i
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
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
        request = _Request(inputs_embeds.detach(), params, max_new_tokens, frozenset(eos_token_ids))
        with self._lock:
            if self._failure is not None or self._stopping:
                raise EngineError("the decode engine has stopped") from self._failure
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
            alive=self._failure is None and not self._stopping,
        )

    def _thread_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="chorus-decode-engine", daemon=True)
            self._thread.start()

    def _cancel(self, request: _Request) -> None:
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
                self._failure = e
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

    def _admit(self, joining: list[_Request]) -> None:
        """Prefill joining requests (packed up to PREFILL_TOKEN_BUDGET tokens) and emit first tokens."""
        pack: list[_Request] = []
        for request in joining:
            if pack and sum(r.embeds.shape[1] for r in pack) + request.embeds.shape[1] > PREFILL_TOKEN_BUDGET:
                self._prefill(pack)
                pack = []
            pack.append(request)
        if pack:
            self._prefill(pack)

    def _prefill(self, pack: list[_Request]) -> None:
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

    def _reuse_prefix(self, request: _Request, row: int) -> int:
        """Copy the request's longest cached prefix into its cache row; returns its length (0: none)."""
        if self.prefix is None:
            return 0
        request.prefix_keys = self.prefix.keys(request.embeds)
        blocks = self.prefix.lookup(request.prefix_keys, request.embeds.shape[1])
        if not blocks:
            return 0
        self.cache.write(row, blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=3))
        return len(blocks) * self.prefix.block_tokens

    def _keep_prefix(self, request: _Request, row: int, past: int) -> None:
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


def _sample_rows(logits: torch.Tensor, requests: list[_Request]) -> list[int]:
    """Next token per row `[B, V]`: greedy rows with one argmax, others with their own generator."""
    chosen = torch.argmax(logits, dim=-1)
    for row, request in enumerate(requests):
        if not request.params.greedy:
            chosen[row] = sample_next_token(logits[row], request.params, request.generator)
    return chosen.tolist()  # the one host sync per step
