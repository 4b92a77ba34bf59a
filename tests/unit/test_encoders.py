"""Encoder deployments' batch work without Ray: one forward per batch, per-item errors, and the
content-hash feature cache (same media twice → no second encode)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from modalities.audio import Segment, Transcript, WhisperRuntime
from modalities.errors import MediaError
from modalities.feature_cache import FeatureCache, media_key, nbytes
from modalities.vision import ClipRuntime
from serve.deployments import AudioEncoder, VisionEncoder
from tests.helpers.media import encoded
from tests.unit.test_speech import noise, tiny_whisper
from tests.unit.test_vision import TINY_CLIP_JSON, noise_image


class Spy:
    """Wraps a bound method, recording the call arguments."""

    def __init__(self, method) -> None:
        self.method, self.calls = method, []

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        return self.method(*args, **kwargs)


def wav(seconds: float, seed: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, noise(seconds, seed), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --- the cache ---------------------------------------------------------------------------------


def test_cache_evicts_least_recently_used_by_bytes() -> None:
    block = np.zeros(256, dtype=np.float32)  # 1 KiB
    cache = FeatureCache(max_bytes=3 * 1024)
    for key in "abc":
        cache.put(key, block.copy())
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", block.copy())  # over budget: b (least recent) goes
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in "acd")
    stats = cache.stats()
    assert (stats.entries, stats.bytes) == (3, 3 * 1024)
    assert (stats.hits, stats.misses) == (4, 1)


def test_cache_disabled_and_oversized_values_not_stored() -> None:
    assert FeatureCache(0).stats().max_bytes == 0
    cache = FeatureCache(0)
    cache.put("a", np.zeros(4))
    assert cache.get("a") is None
    small = FeatureCache(100)
    small.put("big", np.zeros(1000))
    assert small.stats().entries == 0
    with pytest.raises(ValueError):
        FeatureCache(-1)


def test_media_key_depends_on_bytes_and_options() -> None:
    assert media_key(b"x") == media_key(b"x")
    assert media_key(b"x") != media_key(b"y")
    assert media_key(b"x", "transcript", "en") != media_key(b"x", "transcript", "fr")
    assert nbytes((np.zeros(10, np.float16), 1.5)) >= 20


# --- audio ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_encoder() -> AudioEncoder:
    model = tiny_whisper()
    return AudioEncoder({"whisper": {"threads": 1}}, runtime_factory=lambda config: WhisperRuntime(model, config.model_copy(update={"device": "cpu"})))


def test_audio_batch_one_forward_per_item_errors_and_cache(audio_encoder: AudioEncoder) -> None:
    runtime = audio_encoder.runtime
    clip_a, clip_b = wav(1.0, seed=1), wav(2.3, seed=2)
    spy = Spy(runtime.encode_batch)
    runtime.encode_batch = spy
    try:
        results = audio_encoder._run(
            [(clip_a, True, False, None), (b"not audio at all", True, False, None), (clip_b, True, False, None)]
        )
        assert isinstance(results[1], MediaError)
        assert len(spy.calls) == 1 and len(spy.calls[0][0]) == 2  # both good clips in one encoder pass
        for result, data in ((results[0], clip_a), (results[2], clip_b)):
            alone = runtime.encode(runtime.decode(data)).to(torch.float16).numpy()
            np.testing.assert_array_equal(result.features, alone)
            assert result.transcript is None
        assert results[2].duration_s == pytest.approx(2.3, abs=1e-3)
        assert results[2].features.shape == (115, 32)

        spy.calls.clear()
        again = audio_encoder._run([(clip_b, True, False, None)])
        assert spy.calls == []  # answered from the cache
        np.testing.assert_array_equal(again[0].features, results[2].features)
        assert again[0].duration_s == results[2].duration_s
        assert audio_encoder.info()["cache"]["hits"] >= 1
    finally:
        del runtime.encode_batch


def test_audio_transcripts_cached_per_language(audio_encoder: AudioEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = audio_encoder.runtime
    calls: list[str | None] = []

    def transcribe(audio: np.ndarray, language: str | None = None) -> Transcript:
        calls.append(language)
        return Transcript(text=f"heard {len(audio)}", language=language or "en", segments=[Segment(0.0, 1.0, "x")], duration=len(audio) / 16000)

    monkeypatch.setattr(runtime, "transcribe", transcribe)
    clip = wav(1.5, seed=3)
    first = audio_encoder._run([(clip, False, True, "en")])[0]
    second = audio_encoder._run([(clip, False, True, "en")])[0]
    third = audio_encoder._run([(clip, False, True, "fr")])[0]
    assert calls == ["en", "fr"]
    assert first.transcript == second.transcript == f"heard {int(1.5 * 16000)}"
    assert first.features is None and third.language == "fr"
    assert second.segments == [{"start": 0.0, "end": 1.0, "text": "x"}]


# --- vision -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_encoder() -> VisionEncoder:
    config = {"vision": {"model_name": str(TINY_CLIP_JSON), "pretrained": None, "random_init": True, "threads": 1}}
    torch.manual_seed(0)
    return VisionEncoder(config, runtime_factory=ClipRuntime.from_config)


def test_vision_batch_one_forward_per_item_errors_and_cache(vision_encoder: VisionEncoder) -> None:
    runtime = vision_encoder.runtime
    images = [encoded(noise_image(40, 30, seed=s), "PNG") for s in (1, 2)]
    spy = Spy(runtime.encode_images)
    runtime.encode_images = spy
    try:
        results = vision_encoder._run([images[0], b"\x89PNG truncated", images[1]])
        assert isinstance(results[1], MediaError)
        assert len(spy.calls) == 1 and len(spy.calls[0][0]) == 2
        for result, data in ((results[0], images[0]), (results[2], images[1])):
            alone = spy.method([runtime.decode(data)])[0][0].to(torch.float16).numpy()
            np.testing.assert_allclose(result.astype(np.float32), alone.astype(np.float32), atol=2e-3)
        spy.calls.clear()
        again = vision_encoder._run([images[1], images[0]])
        assert spy.calls == []
        np.testing.assert_array_equal(again[0], results[2])
        assert vision_encoder.info()["cache"]["hits"] == 2
    finally:
        del runtime.encode_images
