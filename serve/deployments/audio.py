"""The audio encoder deployment (Whisper): decode + encoder features (+ transcript on request).

Media bytes are decoded here, not at the ingress: decoding is CPU work that must scale with the
encoders. Bad media raises `MediaError`, which reaches the ingress as itself (Ray re-raises a
replica's exception as an instance of its cause).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fusion.registry import AUDIO
from modalities.audio.decode import SAMPLE_RATE
from modalities.audio.options import TranscribeOptions
from modalities.audio.whisper import Segment, WhisperRuntime
from modalities.errors import MediaError
from modalities.feature_cache import media_key
from serve.config import ChorusConfig

from .common import BatchedEncoder, cache_info, feature_cache, with_threads
from .contracts import AudioResult, EncodedItem


@dataclass(frozen=True)
class _Transcribed:
    text: str
    language: str | None
    segments: list[dict[str, Any]]
    words: list[dict[str, Any]] | None  # None: not asked for


def _segment_dict(seg: Segment) -> dict[str, Any]:
    """A segment as plain data (what travels to the ingress), without its words."""
    return {
        "seek": seg.seek,
        "start": seg.start,
        "end": seg.end,
        "text": seg.text,
        "tokens": list(seg.tokens),
        "temperature": seg.temperature,
        "avg_logprob": seg.avg_logprob,
        "compression_ratio": seg.compression_ratio,
        "no_speech_prob": seg.no_speech_prob,
    }


def _transcript_key(data: bytes, options: TranscribeOptions) -> str:
    return media_key(data, "transcript", *options.cache_key())


class AudioEncoder(BatchedEncoder):
    """Whisper: decode + encoder features (+ transcript on request).

    A batch decodes each clip on its own (one bad clip fails only its request), runs the encoder
    once over all clips that need features, and answers repeated clips from a content-hash cache.
    A request is (bytes, want_features, TranscribeOptions or None for no transcript); a transcript
    is cached under everything that changes it (task, language, prompt, temperature, words), and a
    sampled one (temperature > 0) is not cached: asking again draws again.
    """

    kind = AUDIO.kind

    def __init__(self, config: dict[str, Any], runtime_factory: Callable[..., WhisperRuntime] | None = None):
        self.config = ChorusConfig.model_validate(config)
        factory = runtime_factory or WhisperRuntime.from_config
        self.runtime = factory(with_threads(self.config.whisper))
        self.cache = feature_cache(self.config.whisper.feature_cache_mib)

    def _transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> _Transcribed:
        result = self.runtime.transcribe(audio, options=options)
        segments = [_segment_dict(seg) for seg in result.segments]
        words = None
        if options.word_timestamps:
            words = [{"word": w.word, "start": w.start, "end": w.end} for w in result.words]
        return _Transcribed(result.text, result.language, segments, words)

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
        for i, (data, want_features, options) in enumerate(requests):
            cached_f = self.cache.get(media_key(data, "features")) if want_features else None
            cached_t = self.cache.get(_transcript_key(data, options)) if options and not options.sampled else None
            if cached_f is not None:
                features[i], durations[i] = cached_f
            if cached_t is not None:
                transcripts[i], durations[i] = cached_t
            if (want_features and cached_f is None) or (options and cached_t is None):
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
            data, _, options = requests[i]
            try:
                transcripts[i] = self._transcribe(audios[i], options)
            except MediaError as err:
                results[i] = err
                continue
            if not options.sampled:
                self.cache.put(_transcript_key(data, options), (transcripts[i], durations[i]))

        for i, (_data, want_features, _options) in enumerate(requests):
            if results[i] is not None:
                continue
            t = transcripts.get(i)
            results[i] = AudioResult(
                features=features.get(i) if want_features else None,
                transcript=t.text if t else None,
                language=t.language if t else None,
                duration_s=durations[i],
                segments=list(t.segments) if t else None,
                words=list(t.words) if t and t.words is not None else None,
            )
        return results  # type: ignore[return-value]

    async def encode(
        self, data: bytes, want_features: bool = True, want_transcript: bool = False, language: str | None = None
    ) -> AudioResult:
        options = TranscribeOptions(language=language) if want_transcript else None
        return await self._submit((data, want_features, options))

    async def transcribe(self, data: bytes, options: TranscribeOptions) -> AudioResult:
        """The Audio API's call: the transcript (or English translation) with these options."""
        return await self._submit((data, False, options))

    async def encode_item(self, data: bytes, want_features: bool, want_text: bool, kind: str = "audio") -> EncodedItem:
        """The chat path's call (every encoder has it): features and/or the transcript."""
        result = await self.encode(data, want_features, want_text)
        detail = {"language": result.language, "duration_s": round(result.duration_s, 3)} if want_text else None
        return EncodedItem(result.features, result.transcript, detail)

    def info(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.config.whisper_model_name(),
            "weights": self.config.whisper.model,
            "feature_dim": self.runtime.feature_dim,
            "adaptive_window": self.config.whisper.adaptive_window,
            "cache": cache_info(self.cache),
        }
