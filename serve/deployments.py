"""The model deployments as plain classes; `serve/app.py` turns them into Ray Serve deployments.

Each class takes the validated config and a runtime factory (injected, so tests can pass tiny
models). Media bytes are decoded inside the encoder replicas: decoding is CPU work that must scale
with the encoders, not block the ingress. Bad media raises `MediaError`, which reaches the ingress
as itself (Ray re-raises a replica's exception as an instance of its cause).
"""

from __future__ import annotations

import asyncio
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
from modalities.audio import SAMPLE_RATE
from modalities.errors import MediaError
from modalities.llm import LLMRuntime, SamplingParams
from modalities.speech import WhisperRuntime
from modalities.vision import ClipRuntime

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
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # not inside a Ray worker (plain tests)
        cpus = float(os.cpu_count() or 1)
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


class AudioEncoder:
    """Whisper: decode + encoder features (+ transcript on request)."""

    def __init__(self, config: dict[str, Any], runtime_factory: Callable[..., WhisperRuntime] | None = None):
        self.config = ChorusConfig.model_validate(config)
        factory = runtime_factory or WhisperRuntime.from_config
        self.runtime = factory(with_threads(self.config.whisper))

    def _one(self, data: bytes, want_features: bool, want_transcript: bool, language: str | None) -> AudioResult:
        audio = self.runtime.decode(data)
        duration = len(audio) / SAMPLE_RATE
        features = self.runtime.encode(audio).to(torch.float16).numpy() if want_features else None
        transcript = language_out = segments = None
        if want_transcript:
            result = self.runtime.transcribe(audio, language=language)
            transcript, language_out = result.text, result.language
            segments = [{"start": seg.start, "end": seg.end, "text": seg.text} for seg in result.segments]
        return AudioResult(features, transcript, language_out, duration, segments)

    @serve.batch(max_batch_size=MAX_ENCODER_BATCH, batch_wait_timeout_s=ENCODER_BATCH_WAIT_S)
    async def _batch(self, requests: list[tuple]) -> list[AudioResult | MediaError]:
        metrics.ENCODER_BATCH_SIZE.observe(len(requests), tags={"encoder": "audio"})
        start = time.perf_counter()
        results: list[AudioResult | MediaError] = []
        for request in requests:
            try:
                results.append(await asyncio.to_thread(self._one, *request))
            except MediaError as err:  # one bad clip must not fail its batch-mates
                results.append(err)
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
        }


class VisionEncoder:
    """CLIP: decode + patch features."""

    def __init__(self, config: dict[str, Any], runtime_factory: Callable[..., ClipRuntime] | None = None):
        self.config = ChorusConfig.model_validate(config)
        assert self.config.vision is not None, "VisionEncoder built without a vision config"
        factory = runtime_factory or ClipRuntime.from_config
        self.runtime = factory(with_threads(self.config.vision))

    def _one(self, data: bytes) -> np.ndarray:
        patches, _pooled = self.runtime.encode([data])
        return patches[0].to(device="cpu", dtype=torch.float16).numpy()

    @serve.batch(max_batch_size=MAX_ENCODER_BATCH, batch_wait_timeout_s=ENCODER_BATCH_WAIT_S)
    async def _batch(self, images: list[bytes]) -> list[np.ndarray | MediaError]:
        metrics.ENCODER_BATCH_SIZE.observe(len(images), tags={"encoder": "vision"})
        start = time.perf_counter()
        results: list[np.ndarray | MediaError] = []
        for data in images:
            try:
                results.append(await asyncio.to_thread(self._one, data))
            except MediaError as err:
                results.append(err)
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
        inputs_embeds = await asyncio.to_thread(self._inputs, request)
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
                yield DecodeEvent(event.text, event.finish_reason, prompt_tokens, completion_tokens)
                if event.finish_reason is not None:
                    return
        finally:
            self.active_streams -= 1
            executor.submit(stream.close)
            executor.shutdown(wait=False)

    def tokenizer(self):
        """The tokenizer this decoder runs (the ingress plans prompts with the very same one)."""
        return self.runtime.tokenizer

    def info(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.config.llm.model,
            "quantization": self.config.llm.quantization,
            "weight_bytes": self.runtime.weight_bytes(),
            "max_context": self.runtime.max_context,
            "active_streams": self.active_streams,
            "projectors": sorted(self.projectors),
            "random_projectors": self.config.fusion.allow_random_projectors,
        }
