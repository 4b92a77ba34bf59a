"""The decoder deployment: the quantized LLM plus the projectors.

A `DecodeRequest` (the conversation, modes, encoder features) comes in; the decoder renders the
prompt with its own tokenizer and chat template, projects each embedded media item into the LLM's
token space, splices, and streams tokens back. Prompt rendering lives here, next to the tokenizer,
so the ingress never loads one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from fusion.projectors import build_projector
from fusion.prompt import PromptPlan, build_prompt, splice
from fusion.registry import MODALITIES, ModalitySpec, spec
from modalities.audio.config import WhisperConfig
from modalities.errors import InputError, MediaError
from modalities.llm.params import SamplingParams
from modalities.llm.runtime import EventStream, LLMRuntime
from serve.config import ChorusConfig

from .common import with_threads
from .contracts import DecodeEvent, DecodeRequest
from .explainer import Explainer

CONTEXT_EXCEEDED = "context_length_exceeded"


class LLMDecoder:
    """The quantized LLM plus the projectors: a conversation + media features in, tokens out."""

    def __init__(self, config: dict[str, Any], runtime_factory: Callable[..., LLMRuntime] | None = None):
        self.config = ChorusConfig.model_validate(config)
        factory = runtime_factory or LLMRuntime.from_config
        self.runtime = factory(with_threads(self.config.llm))
        self.projectors = self._load_projectors()
        self._generating = 0  # generate() calls in progress
        self._streams: list[EventStream] = []  # their runtime streams, kept until the decode loop lets go of them
        self._streams_lock = threading.Lock()
        self.explainer = Explainer(self.config.llm.model)  # its model loads on the first explained request

    @property
    def active_streams(self) -> int:
        return self.open_streams()

    def _encoder_identity(self, media: ModalitySpec):
        """The encoder a `media` projector must have been trained against, where its weights can be
        identified (the vision encoder's cannot yet: no real CLIP weights exist here)."""
        from fusion.checkpoint import whisper_identity

        encoder = self.config.encoder_config(media)
        return whisper_identity(encoder.model) if isinstance(encoder, WhisperConfig) else None

    def _load_projectors(self) -> dict[str, torch.nn.Module]:
        """Each configured projector checkpoint, checked against this LLM and its encoder."""
        paths = {kind: self.config.fusion.projector(media) for kind, media in MODALITIES.items()}
        paths = {kind: path for kind, path in paths.items() if path}
        if not paths:
            return {}
        from fusion.checkpoint import llm_identity, load_projector

        llm = llm_identity(self.config.llm.model)
        projectors: dict[str, torch.nn.Module] = {}
        for kind, path in paths.items():
            projectors[kind], _metadata = load_projector(
                path, llm_hidden_size=self.runtime.hidden_size, llm=llm, encoder=self._encoder_identity(spec(kind))
            )
        return projectors

    def _projector(self, kind: str, in_dim: int) -> torch.nn.Module:
        projector = self.projectors.get(kind)
        if projector is None and self.config.fusion.allow_random_projectors:
            # Untrained projector, explicitly allowed by config (tests): dims come from the features.
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(0)
            key = spec(kind).default_projector
            projector = self.projectors[kind] = build_projector(key, in_dim, self.runtime.hidden_size).eval()
            torch.random.set_rng_state(generator_state)
        if projector is None:
            raise MediaError(f"no {kind} projector is configured on this deployment", code="unsupported_media")
        return projector

    def _plan(self, request: DecodeRequest) -> tuple[PromptPlan, SamplingParams, int]:
        """The prompt plan, the sampling parameters capped to the context left, and the prompt's
        length in tokens (text tokens plus each media item's soft tokens, as its projector makes them).
        Raises `InputError` when the prompt does not fit the context window."""
        plan = build_prompt(request.messages, self.runtime.tokenizer, modes=request.modes)
        prompt_tokens = plan.num_text_tokens
        for slot in plan.slots:
            features = request.media[slot.index]
            assert features.ndim == 2, f"{slot.kind} features must be {spec(slot.kind).feature_shape}"
            frames, width = features.shape
            prompt_tokens += self._projector(slot.kind, width).num_output_tokens(frames)
        max_context = self.runtime.max_context
        requested = request.requested_max_tokens or 0
        if prompt_tokens + requested > max_context or prompt_tokens >= max_context:
            raise InputError(
                f"This model's maximum context length is {max_context} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in "
                "the completion). Please reduce the length of the messages or completion.",
                param="messages",
                code=CONTEXT_EXCEEDED,
            )
        params = dataclasses.replace(request.params, max_tokens=min(request.params.max_tokens, max_context - prompt_tokens))
        return plan, params, prompt_tokens

    def _inputs(self, plan: PromptPlan, request: DecodeRequest) -> tuple[torch.Tensor, dict[int, int]]:
        text_pieces = [p for p in plan.pieces if isinstance(p, list)]
        text_embeds = [self.runtime.embed(torch.tensor(ids, dtype=torch.long)) for ids in text_pieces]
        media: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for slot in plan.slots:
                features = torch.from_numpy(request.media[slot.index]).float().unsqueeze(0)
                projector = self._projector(slot.kind, features.shape[-1])
                dtype = text_embeds[0].dtype if text_embeds else torch.float32
                media[slot.index] = projector(features)[0].to(dtype)
        inputs_embeds, _mask, counts = splice(plan, text_embeds, media)
        return inputs_embeds, counts

    def _start(self, request: DecodeRequest) -> tuple[EventStream, int, Callable[[list[int]], dict] | None]:
        """The prompt embedded and queued in the decode loop (its constraint compiled): (stream, prompt
        tokens, and with `request.explain` the function that explains the answer's token ids)."""
        plan, params, _prompt_tokens = self._plan(request)
        inputs_embeds, counts = self._inputs(plan, request)
        stream = self.runtime.stream(inputs_embeds=inputs_embeds, params=params)
        explain = None
        if request.explain:
            frames = {index: features.shape[0] for index, features in request.media.items()}
            explain = functools.partial(self.explainer.explain, plan, inputs_embeds, media_tokens=counts, media_frames=frames)
        return stream, inputs_embeds.shape[1], explain

    async def generate(self, request: DecodeRequest) -> AsyncIterator[DecodeEvent]:
        """Stream decode events; the last one carries finish_reason and usage."""
        received = time.perf_counter()
        if request.media or request.params.constraint is not None:
            # Projectors run, or a grammar compiles (a large schema can take a while): off the event loop.
            stream, prompt_tokens, explain = await asyncio.to_thread(self._start, request)
        else:  # text only: tokenizing and an embedding lookup, cheaper than the thread hop (TTFT)
            stream, prompt_tokens, explain = self._start(request)
        answer_ids: list[int] = []
        sentinel = object()
        completion_tokens = 0
        # One thread per stream: steps of concurrent streams interleave token by token. Cancelling
        # does not go through it: a `next()` may be blocked there for a long prefill (or a queue).
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        loop = asyncio.get_running_loop()
        interval = self.config.llm.stream_interval
        params = request.params
        self._open_stream(stream)
        try:
            while True:
                # The first token leaves alone, at once (TTFT; and always alone, whatever is queued behind it)
                first = completion_tokens == 0
                wanted, most = (1, 1) if first else (interval, MAX_TOKENS_PER_EVENT)
                events = await loop.run_in_executor(executor, _next_events, stream, sentinel, wanted, most)
                if not events:
                    return
                first_token_s = time.perf_counter() - received if completion_tokens == 0 else None
                completion_tokens += len(events)
                text = "".join(event.text for event in events)
                logprobs = self._logprobs(events) if params.logprobs else None
                finish = events[-1].finish_reason
                explanation = None
                if explain is not None:
                    answer_ids.extend(event.token_id for event in events)
                    if finish is not None and answer_ids:  # one batched pass, off the loop and the engine
                        explanation = await asyncio.to_thread(explain, answer_ids)
                yield DecodeEvent(text, finish, prompt_tokens, completion_tokens, first_token_s, logprobs, explanation)
                if finish is not None:
                    return
        finally:
            # A client that went away stops its request now, whatever the executor is blocked on: a
            # queued request leaves the engine at once, a running one at its next prefill chunk or
            # step, and the blocked `next()` returns. The generator itself is closed on its own
            # thread (it can't be closed while it runs), right after that `next()`.
            stream.cancel()
            executor.submit(stream.close)
            executor.shutdown(wait=False)
            with self._streams_lock:
                self._generating -= 1

    def _logprobs(self, events: list) -> list[dict[str, Any]]:
        """OpenAI's `logprobs.content` entries for these tokens: token, logprob, bytes, top_logprobs."""
        return [
            {**self._token_entry(e.logprob.token_id, e.logprob.logprob), "top_logprobs": [self._token_entry(t, lp) for t, lp in e.logprob.top]}
            for e in events
            if e.logprob is not None
        ]

    def _token_entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        raw = self.runtime.token_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(logprob, -9999.0), "bytes": list(raw)}

    def _open_stream(self, stream: EventStream) -> None:
        with self._streams_lock:
            self._generating += 1
            self._streams = [s for s in self._streams if not s.released]
            self._streams.append(stream)

    def open_streams(self) -> int:
        """Streams this replica still works on: being generated, or cancelled but still held by the
        engine (it lets go of a cancelled one at its next prefill chunk or decode step)."""
        with self._streams_lock:
            self._streams = [s for s in self._streams if not s.released]
            return max(self._generating, len(self._streams))

    def check_health(self) -> None:
        """Serve's periodic health check: a dead decode engine fails it, so Serve replaces the replica."""
        stats = self.runtime.engine_stats()
        if stats is not None and not stats.alive:
            raise RuntimeError("the decode engine thread has died")

    def info(self) -> dict[str, Any]:
        stats = self.runtime.engine_stats()
        return {
            "status": "ok" if stats is None or stats.alive else "unhealthy",
            "engine": self.config.llm.engine,
            "engine_stats": None if stats is None else dataclasses.asdict(stats),
            "model": self.config.llm.model,
            "quantization": self.config.llm.quantization,
            "weight_bytes": self.runtime.weight_bytes(),
            "max_context": self.runtime.max_context,
            "active_streams": self.active_streams,
            "projectors": sorted(self.projectors),
            "random_projectors": self.config.fusion.allow_random_projectors,
            # What a request that omits a sampling field gets: the config's, over the model's.
            "default_sampling": {
                **self.runtime.sampling_defaults,
                **self.config.llm.default_sampling.model_dump(exclude_none=True),
            },
        }


# Tokens one event may carry: a stream whose consumer fell behind (the ingress, the client) catches
# up in a few events instead of one Ray round trip per token.
MAX_TOKENS_PER_EVENT = 16


def _next_events(stream: EventStream, sentinel: object, at_least: int = 1, at_most: int = MAX_TOKENS_PER_EVENT) -> list:
    """The next `at_least` token events (waiting for them; fewer if the stream ends), plus those
    already decoded behind them, up to `at_most`; [] at the end.

    One event per token costs a thread hop, a loop wake-up and a Ray streaming item each, on the CPU
    the engine decodes on: when tokens are queued (the consumer is behind), they go together.
    """
    events: list = []
    while len(events) < at_most and (len(events) < at_least or stream.ready()):
        event = next(stream, sentinel)
        if event is sentinel:
            break
        events.append(event)
        if event.finish_reason is not None:
            break
    return events
