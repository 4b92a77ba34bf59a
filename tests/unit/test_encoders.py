"""Encoder deployments' batch work without Ray: one forward per batch, per-item errors, and the
content-hash feature cache (same media twice → no second encode)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from modalities.audio import Segment, TranscribeOptions, Transcript, WhisperRuntime, Word
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
            [(clip_a, True, None), (b"not audio at all", True, None), (clip_b, True, None)]
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
        again = audio_encoder._run([(clip_b, True, None)])
        assert spy.calls == []  # answered from the cache
        np.testing.assert_array_equal(again[0].features, results[2].features)
        assert again[0].duration_s == results[2].duration_s
        assert audio_encoder.info()["cache"]["hits"] >= 1
    finally:
        del runtime.encode_batch


def test_audio_transcripts_cached_per_options(audio_encoder: AudioEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = audio_encoder.runtime
    calls: list[TranscribeOptions] = []

    def transcribe(audio: np.ndarray, language: str | None = None, options: TranscribeOptions | None = None) -> Transcript:
        calls.append(options)
        words = (Word("x", 0.1, 0.4, 0.9),) if options.word_timestamps else ()
        segment = Segment(0.0, 1.0, "x", seek=0, tokens=(50364, 87), avg_logprob=-0.2, words=words)
        return Transcript(text=f"heard {len(audio)}", language=options.language or "en", segments=(segment,), duration=len(audio) / 16000)

    monkeypatch.setattr(runtime, "transcribe", transcribe)
    clip = wav(1.5, seed=3)
    english = TranscribeOptions(language="en")
    first = audio_encoder._run([(clip, False, english)])[0]
    second = audio_encoder._run([(clip, False, TranscribeOptions(language="en"))])[0]
    assert len(calls) == 1 and first.transcript == second.transcript == f"heard {int(1.5 * 16000)}"
    assert first.features is None and first.words is None
    assert second.segments == [
        {"seek": 0, "start": 0.0, "end": 1.0, "text": "x", "tokens": [50364, 87], "temperature": 0.0,
         "avg_logprob": -0.2, "compression_ratio": 0.0, "no_speech_prob": 0.0}
    ]  # fmt: skip

    # every option that changes the transcript is its own cache entry
    others = [
        TranscribeOptions(language="fr"),
        TranscribeOptions(language="en", task="translate"),
        TranscribeOptions(language="en", prompt="Refunds, orders."),
        TranscribeOptions(language="en", temperature=0.2),
        TranscribeOptions(language="en", word_timestamps=True),
    ]
    results = audio_encoder._run([(clip, False, options) for options in others])
    assert calls[1:] == others
    assert results[0].language == "fr" and results[-1].words == [{"word": "x", "start": 0.1, "end": 0.4}]
    # each cached but the sampled one (temperature > 0: asking again draws again)
    audio_encoder._run([(clip, False, options) for options in others])
    assert calls[len(others) + 1 :] == [TranscribeOptions(language="en", temperature=0.2)]


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
