"""The model deployments as plain classes; `serve/app.py` turns them into Ray Serve deployments.

Each class takes the validated config and a runtime factory (injected, so tests can pass tiny
models). Media bytes are decoded inside the encoder replicas: decoding is CPU work that must scale
with the encoders, not block the ingress. Bad media raises `MediaError`, which reaches the ingress
as itself (Ray re-raises a replica's exception as an instance of its cause).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import numpy as np
import torch
from ray import serve

from fusion.projectors import build_projector
from fusion.prompt import PromptPlan, splice
from modalities.audio.decode import SAMPLE_RATE
from modalities.errors import MediaError
from modalities.feature_cache import FeatureCache, media_key
from modalities.llm.runtime import LLMRuntime, SamplingParams
from modalities.audio.whisper import WhisperRuntime
from modalities.vision.clip import ClipRuntime

from . import metrics
from .config import ChorusConfig

log = logging.getLogger("chorus.serve")

MAX_ENCODER_BATCH = 8
ENCODER_BATCH_WAIT_S = 0.01
AUDIO_STACK = 4  # Whisper frames per audio soft token (the shipped projector's `stack{k}`)


def claimed_cpus() -> int:
    """The CPUs this replica claimed from Ray (at least 1), to size torch's thread pool.

    Ray starts actors with OMP_NUM_THREADS=1 for claims of one CPU or less, which would leave torch
    single-threaded whatever the deployment claimed; the runtimes set their thread count from
    config instead, and a config that names none gets the claim.
    """
    import ray

    if not ray.is_initialized():  # plain tests: asking for the runtime context would start Ray
        return max(1, os.cpu_count() or 1)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(round(cpus)))


def with_threads(model_config):
    """The model config with `threads` filled in from the replica's CPU claim when unset."""
    if model_config.threads is not None:
        return model_config
    return model_config.model_copy(update={"threads": claimed_cpus()})


@dataclass
class AudioResult:
    features: np.ndarray | None  # [T, d_audio] float16, T = 50 frames/s of real audio
    transcript: str | None
    language: str | None
    duration_s: float
    segments: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class _Transcribed:
    text: str
    language: str | None
    segments: list[dict[str, Any]]


def _cache(mib: float) -> FeatureCache:
    return FeatureCache(int(mib * 2**20))


def _cache_info(cache: FeatureCache) -> dict[str, int]:
    stats = cache.stats()
    return {"hits": stats.hits, "misses": stats.misses, "entries": stats.entries, "bytes": stats.bytes}


class AudioEncoder:
    """Whisper: decode + encoder features (+ transcript on request).

    A batch decodes each clip on its own (one bad clip fails only its request), runs the encoder
    once over all clips that need features, and answers repeated clips from a content-hash cache.
    """

    def __init__(self, config: dict[str, Any], runtime_factory: Callable[..., WhisperRuntime] | None = None):
        self.config = ChorusConfig.model_validate(config)
        factory = runtime_factory or WhisperRuntime.from_config
        self.runtime = factory(with_threads(self.config.whisper))
        self.cache = _cache(self.config.whisper.feature_cache_mib)

    def _transcribe(self, audio: np.ndarray, language: str | None) -> _Transcribed:
        result = self.runtime.transcribe(audio, language=language)
        segments = [{"start": seg.start, "end": seg.end, "text": seg.text} for seg in result.segments]
        return _Transcribed(result.text, result.language, segments)

    def _features(self, audios: list[np.ndarray]) -> list[np.ndarray | MediaError]:
        """One encoder pass over several clips; on a bad clip, fall back to one pass per clip."""
        try:
            return [f.to(torch.float16).numpy() for f in self.runtime.encode_batch(audios)]
        except MediaError:
            results: list[np.ndarray | MediaError] = []
            for audio in audios:
                try:
                    results.append(self.runtime.encode(audio).to(torch.float16).numpy())
                except MediaError as err:
                    results.append(err)
            return results

    def _run(self, requests: list[tuple]) -> list[AudioResult | MediaError]:
        """Model work for one batch (runs in a worker thread)."""
        results: list[AudioResult | MediaError | None] = [None] * len(requests)
        durations: dict[int, float] = {}
        features: dict[int, np.ndarray | None] = {}
        transcripts: dict[int, _Transcribed | None] = {}
        audios: dict[int, np.ndarray] = {}
        for i, (data, want_features, want_transcript, language) in enumerate(requests):
            cached_f = self.cache.get(media_key(data, "features")) if want_features else None
            cached_t = self.cache.get(media_key(data, "transcript", language)) if want_transcript else None
            if cached_f is not None:
                features[i], durations[i] = cached_f
            if cached_t is not None:
                transcripts[i], durations[i] = cached_t
            if (want_features and cached_f is None) or (want_transcript and cached_t is None):
                try:
                    audios[i] = self.runtime.decode(data)
                except MediaError as err:
                    results[i] = err
                    continue
                durations[i] = len(audios[i]) / SAMPLE_RATE

        todo = [i for i in audios if requests[i][1] and i not in features]
        for i, encoded in zip(todo, self._features([audios[i] for i in todo]) if todo else []):
            if isinstance(encoded, MediaError):
                results[i] = encoded
                continue
            features[i] = encoded
            self.cache.put(media_key(requests[i][0], "features"), (encoded, durations[i]))

        for i in audios:
            if results[i] is not None or not requests[i][2] or i in transcripts:
                continue
            data, _, _, language = requests[i]
            try:
                transcripts[i] = self._transcribe(audios[i], language)
            except MediaError as err:
                results[i] = err
                continue
            self.cache.put(media_key(data, "transcript", language), (transcripts[i], durations[i]))

        for i, (_data, want_features, want_transcript, _language) in enumerate(requests):
            if results[i] is not None:
                continue
            t = transcripts.get(i)
            results[i] = AudioResult(
                features=features.get(i) if want_features else None,
                transcript=t.text if t else None,
                language=t.language if t else None,
                duration_s=durations[i],
                segments=list(t.segments) if t else None,
            )
        return results  # type: ignore[return-value]

    @serve.batch(max_batch_size=MAX_ENCODER_BATCH, batch_wait_timeout_s=ENCODER_BATCH_WAIT_S)
    async def _batch(self, requests: list[tuple]) -> list[AudioResult | MediaError]:
        metrics.ENCODER_BATCH_SIZE.observe(len(requests), tags={"encoder": "audio"})
        start = time.perf_counter()
        results = await asyncio.to_thread(self._run, requests)
        metrics.ENCODER_LATENCY.observe(time.perf_counter() - start, tags={"encoder": "audio"})
        return results

    async def encode(
        self, data: bytes, want_features: bool = True, want_transcript: bool = False, language: str | None = None
    ) -> AudioResult:
        result = await self._batch((data, want_features, want_transcript, language))
        if isinstance(result, MediaError):
            raise result
        return result

    def info(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.config.whisper_model_name(),
            "weights": self.config.whisper.model,
            "feature_dim": self.runtime.feature_dim,
            "adaptive_window": self.config.whisper.adaptive_window,
            "cache": _cache_info(self.cache),
        }


class VisionEncoder:
    """CLIP: decode + patch features, one forward pass per batch, repeated images from the cache."""

    def __init__(self, config: dict[str, Any], runtime_factory: Callable[..., ClipRuntime] | None = None):
        self.config = ChorusConfig.model_validate(config)
        assert self.config.vision is not None, "VisionEncoder built without a vision config"
        factory = runtime_factory or ClipRuntime.from_config
        self.runtime = factory(with_threads(self.config.vision))
        self.cache = _cache(self.config.vision.feature_cache_mib)

    def _run(self, images: list[bytes]) -> list[np.ndarray | MediaError]:
        """Model work for one batch (runs in a worker thread): per-image decode, one forward."""
        results: list[np.ndarray | MediaError | None] = [None] * len(images)
        decoded: dict[int, Any] = {}
        for i, data in enumerate(images):
            cached = self.cache.get(media_key(data))
            if cached is not None:
                results[i] = cached
                continue
            try:
                decoded[i] = self.runtime.decode(data)
            except MediaError as err:
                results[i] = err
        if decoded:
            patches, _pooled = self.runtime.encode_images(list(decoded.values()))
            for i, features in zip(decoded, patches):
                array = features.to(device="cpu", dtype=torch.float16).numpy()
                results[i] = array
                self.cache.put(media_key(images[i]), array)
        return results  # type: ignore[return-value]

    @serve.batch(max_batch_size=MAX_ENCODER_BATCH, batch_wait_timeout_s=ENCODER_BATCH_WAIT_S)
    async def _batch(self, images: list[bytes]) -> list[np.ndarray | MediaError]:
        metrics.ENCODER_BATCH_SIZE.observe(len(images), tags={"encoder": "vision"})
        start = time.perf_counter()
        results = await asyncio.to_thread(self._run, images)
        metrics.ENCODER_LATENCY.observe(time.perf_counter() - start, tags={"encoder": "vision"})
        return results

    async def encode(self, data: bytes) -> np.ndarray:
        result = await self._batch(data)
        if isinstance(result, MediaError):
            raise result
        return result

    def info(self) -> dict[str, Any]:
        vision = self.config.vision
        assert vision is not None
        return {
            "status": "ok",
            "model": vision.model_name,
            "pretrained": vision.pretrained,
            "has_weights": self.runtime.has_weights,
            "feature_layer": vision.feature_layer,
            "cache": _cache_info(self.cache),
        }


@dataclass
class DecodeRequest:
    plan: PromptPlan
    media: dict[int, np.ndarray]  # media index → encoder features
    params: SamplingParams


@dataclass
class DecodeEvent:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # First event only: seconds from the decoder receiving the request to this token (prompt
    # embedding, queueing for a slot, prefill); the ingress reports it in `Server-Timing`.
    first_token_s: float | None = None


class LLMDecoder:
    """The quantized LLM plus the projectors: prompt plan + media features in, tokens out."""

    def __init__(self, config: dict[str, Any], runtime_factory: Callable[..., LLMRuntime] | None = None):
        self.config = ChorusConfig.model_validate(config)
        factory = runtime_factory or LLMRuntime.from_config
        self.runtime = factory(with_threads(self.config.llm))
        self.projectors = self._load_projectors()
        self.active_streams = 0

    def _load_projectors(self) -> dict[str, torch.nn.Module]:
        fusion = self.config.fusion
        hidden = self.runtime.hidden_size
        projectors: dict[str, torch.nn.Module] = {}
        if not (fusion.audio_projector or fusion.vision_projector):
            return projectors
        from fusion.checkpoint import llm_identity, load_projector, whisper_identity

        llm = llm_identity(self.config.llm.model)
        # The vision encoder's weights are not identified yet (no real CLIP weights here), so only
        # the audio projector is checked against its encoder.
        encoders = {"audio": whisper_identity(self.config.whisper.model), "image": None}
        for kind, path in (("audio", fusion.audio_projector), ("image", fusion.vision_projector)):
            if path:
                projectors[kind], _metadata = load_projector(
                    path, llm_hidden_size=hidden, llm=llm, encoder=encoders[kind]
                )
        return projectors

    def _projector(self, kind: str, in_dim: int) -> torch.nn.Module:
        projector = self.projectors.get(kind)
        if projector is None and self.config.fusion.allow_random_projectors:
            # Untrained projector, explicitly allowed by config (tests): dims come from the features.
            key = f"stack{AUDIO_STACK}_swiglu" if kind == "audio" else "mlp2x_gelu"
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(0)
            projector = self.projectors[kind] = build_projector(key, in_dim, self.runtime.hidden_size).eval()
            torch.random.set_rng_state(generator_state)
        if projector is None:
            raise MediaError(f"no {kind} projector is configured on this deployment", code="unsupported_media")
        return projector

    def _inputs(self, request: DecodeRequest) -> torch.Tensor:
        plan = request.plan
        text_pieces = [p for p in plan.pieces if isinstance(p, list)]
        text_embeds = [self.runtime.embed(torch.tensor(ids, dtype=torch.long)) for ids in text_pieces]
        media: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for slot in plan.slots:
                features = torch.from_numpy(request.media[slot.index]).float().unsqueeze(0)
                projector = self._projector(slot.kind, features.shape[-1])
                dtype = text_embeds[0].dtype if text_embeds else torch.float32
                media[slot.index] = projector(features)[0].to(dtype)
        inputs_embeds, _mask, _counts = splice(plan, text_embeds, media)
        return inputs_embeds

    async def generate(self, request: DecodeRequest) -> AsyncIterator[DecodeEvent]:
        """Stream decode events; the last one carries finish_reason and usage."""
        received = time.perf_counter()
        if request.plan.slots:  # projectors run: off the event loop
            inputs_embeds = await asyncio.to_thread(self._inputs, request)
        else:  # text only: an embedding lookup, cheaper than the thread hop (TTFT)
            inputs_embeds = self._inputs(request)
        prompt_tokens = inputs_embeds.shape[1]
        stream = self.runtime.stream(inputs_embeds=inputs_embeds, params=request.params)
        sentinel = object()
        completion_tokens = 0
        # One thread per stream: steps of concurrent streams interleave token by token, and the
        # close below is queued behind a step still in flight (a generator can't be closed while
        # it runs), so a client that goes away frees its KV cache right after the current step.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        loop = asyncio.get_running_loop()
        self.active_streams += 1
        try:
            while True:
                event = await loop.run_in_executor(executor, next, stream, sentinel)
                if event is sentinel:
                    return
                completion_tokens += 1
                first_token_s = time.perf_counter() - received if completion_tokens == 1 else None
                yield DecodeEvent(event.text, event.finish_reason, prompt_tokens, completion_tokens, first_token_s)
                if event.finish_reason is not None:
                    return
        finally:
            self.active_streams -= 1
            executor.submit(stream.close)
            executor.shutdown(wait=False)

    def tokenizer(self):
        """The tokenizer this decoder runs (the ingress plans prompts with the very same one)."""
        return self.runtime.tokenizer

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
        }
