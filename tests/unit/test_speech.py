"""WhisperRuntime on tiny random Whisper models: feature shapes, adaptive window, chunking,
transcription plumbing (window, token cap, language), config validation."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
import whisper.decoding
from whisper.model import ModelDimensions, Whisper

from modalities.audio.config import WhisperConfig
from modalities.audio.decode import SAMPLE_RATE, WINDOW_MEL_FRAMES, WINDOW_SAMPLES
from modalities.audio.mel import log_mel
from modalities.audio.options import TranscribeOptions
from modalities.audio.whisper import TOKEN_CAP_SLACK, Transcript, WhisperRuntime, encode_mel
from modalities.audio.whisper_names import normalize_language
from modalities.errors import MediaError

# n_vocab 51865 = the multilingual tokenizer whisper's decoding builds from the dims.
TINY = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2,
    n_vocab=51865, n_text_ctx=448, n_text_state=32, n_text_head=2, n_text_layer=2,
)  # fmt: skip


def tiny_whisper(dims: ModelDimensions = TINY) -> Whisper:
    torch.manual_seed(0)
    model = Whisper(dims)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.02)  # torch.empty in whisper's __init__
    return model.eval()


@pytest.fixture(scope="module")
def model() -> Whisper:
    return tiny_whisper()


def runtime(model: Whisper, **config) -> WhisperRuntime:
    return WhisperRuntime(model, WhisperConfig(device="cpu", **config))


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


# -- encode --------------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", [1, 319, 321, 16_000, 3 * 16_000 + 5])
@pytest.mark.parametrize("adaptive", [True, False])
def test_feature_length_is_ceil_samples_over_320(model: Whisper, samples: int, adaptive: bool) -> None:
    feats = runtime(model, adaptive_window=adaptive).encode(noise(samples / SAMPLE_RATE + 1e-9)[:samples])
    assert feats.shape == (math.ceil(samples / 320), TINY.n_audio_state)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()


def test_encode_mel_on_a_full_window_is_whispers_encoder(model: Whisper) -> None:
    mel = log_mel(noise(4.0), 80).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(encode_mel(model.encoder, mel), model.encoder(mel))


def test_adaptive_equals_full_when_attention_cannot_see_the_padding() -> None:
    # With no attention blocks each frame depends only on its conv neighbourhood, so the adaptive
    # window (positional embedding sliced) must reproduce the full window exactly, except the last
    # frame, whose conv1 receptive field reaches one mel frame past the cut (zero pad vs silence).
    model = tiny_whisper(replace(TINY, n_audio_layer=0))
    clip = noise(2.01)
    adaptive = runtime(model, adaptive_window=True).encode(clip)
    full = runtime(model, adaptive_window=False).encode(clip)
    assert adaptive.shape == full.shape == (101, TINY.n_audio_state)
    torch.testing.assert_close(adaptive[:-1], full[:-1])


def test_adaptive_differs_from_full_only_through_attention(model: Whisper) -> None:
    clip = noise(1.5)
    adaptive = runtime(model, adaptive_window=True).encode(clip)
    full = runtime(model, adaptive_window=False).encode(clip)
    assert adaptive.shape == full.shape
    # attention over 1.5 s instead of 30 s changes every frame a little, none completely
    assert not torch.allclose(adaptive, full, atol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(adaptive, full, dim=-1)
    assert cosine.min() > 0.5


def test_exact_30s_window_is_identical_either_way(model: Whisper) -> None:
    clip = noise(30.0)
    adaptive = runtime(model, adaptive_window=True).encode(clip)
    full = runtime(model, adaptive_window=False).encode(clip)
    assert adaptive.shape == (1500, TINY.n_audio_state)
    torch.testing.assert_close(adaptive, full)


@pytest.mark.parametrize("adaptive", [True, False])
def test_long_audio_is_chunked_into_30s_windows(model: Whisper, adaptive: bool) -> None:
    clip = noise(65.0)
    rt = runtime(model, adaptive_window=adaptive)
    feats = rt.encode(clip)
    assert feats.shape == (3250, TINY.n_audio_state)
    pieces = [rt.encode(clip[s : s + WINDOW_SAMPLES]) for s in range(0, len(clip), WINDOW_SAMPLES)]
    assert [p.shape[0] for p in pieces] == [1500, 1500, 250]
    torch.testing.assert_close(feats, torch.cat(pieces))


def test_batch_results_do_not_depend_on_batch_mates(model: Whisper) -> None:
    rt = runtime(model, encode_batch_windows=2)  # three full windows: batches of 2 + 1
    clips = [noise(1.0, seed=1), noise(2.5, seed=2), noise(1.0, seed=3), noise(31.0, seed=4), noise(61.0, seed=5)]
    batched = rt.encode_batch(clips)
    for clip, feats in zip(clips, batched):
        torch.testing.assert_close(feats, rt.encode(clip))
    assert [f.shape[0] for f in batched] == [50, 125, 50, 1550, 3050]


def test_encode_rejects_empty_and_non_mono(model: Whisper) -> None:
    rt = runtime(model)
    with pytest.raises(MediaError):
        rt.encode(np.zeros(0, np.float32))
    with pytest.raises(ValueError):
        rt.encode(np.zeros((2, 100), np.float32))


# -- transcribe ----------------------------------------------------------------------------------


class DecodeSpy:
    """Records the encoder input length and the sample_len of every decoding run."""

    def __init__(self, model: Whisper, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mel_frames: list[int] = []
        self.sample_lens: list[int] = []
        model.encoder.conv1.register_forward_hook(lambda _m, args, _o: self.mel_frames.append(args[0].shape[-1]))
        run = whisper.decoding.DecodingTask.run

        def spy_run(task, mel):
            self.sample_lens.append(task.sample_len)
            return run(task, mel)

        monkeypatch.setattr(whisper.decoding.DecodingTask, "run", spy_run)


def test_adaptive_transcription_encodes_clip_plus_margin_with_token_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_whisper()
    spy = DecodeSpy(model, monkeypatch)
    clip = noise(2.0)
    transcript = runtime(model, adaptive_margin_s=3.0, max_tokens_per_second=4.0).transcribe(clip)

    assert isinstance(transcript, Transcript)
    assert transcript.duration == pytest.approx(2.0) and transcript.language == "en"
    assert isinstance(transcript.text, str)
    assert all(0 <= s.start <= s.end <= transcript.duration for s in transcript.segments)
    assert set(spy.mel_frames) == {2 * math.ceil((2.0 + 3.0) * SAMPLE_RATE / 320)}  # 500, not 3000
    assert spy.sample_lens and set(spy.sample_lens) == {math.ceil(4.0 * 2.0) + TOKEN_CAP_SLACK}


def test_full_window_transcription_and_uncapped_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_whisper()
    spy = DecodeSpy(model, monkeypatch)
    runtime(model, adaptive_window=False, max_tokens_per_second=None).transcribe(noise(0.5))
    assert set(spy.mel_frames) == {WINDOW_MEL_FRAMES}
    assert set(spy.sample_lens) == {TINY.n_text_ctx // 2}


def test_long_audio_transcribes_in_full_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_whisper()
    spy = DecodeSpy(model, monkeypatch)
    transcript = runtime(model, max_tokens_per_second=1.0).transcribe(noise(31.0))
    assert transcript.duration == pytest.approx(31.0)
    assert set(spy.mel_frames) == {WINDOW_MEL_FRAMES} and len(spy.sample_lens) >= 2
    assert set(spy.sample_lens) == {30 + TOKEN_CAP_SLACK}  # the cap counts a window's 30 s
    assert all(s.end <= 31.0 for s in transcript.segments)


def test_language_handling(model: Whisper, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(model, max_tokens_per_second=0.5)
    assert rt.transcribe(noise(0.5), language="German").language == "de"
    with pytest.raises(MediaError) as info:
        rt.transcribe(noise(0.5), language="klingon")
    assert info.value.param == "language"

    english_only = runtime(tiny_whisper(replace(TINY, n_vocab=51864)))
    with pytest.raises(MediaError, match="English-only"):
        english_only.transcribe(noise(0.5), language="de")

    detected = runtime(model, language=None, max_tokens_per_second=0.5).transcribe(noise(0.5))
    assert normalize_language(detected.language) == detected.language  # a real code, whatever it is


def test_word_timestamps_only_when_asked_on_the_windowed_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    import whisper.timing

    model = tiny_whisper()
    spy = DecodeSpy(model, monkeypatch)
    alignments: list[int] = []
    find_alignment = whisper.timing.find_alignment

    def spy_alignment(model, tokenizer, text_tokens, mel, num_frames, **kwargs):
        alignments.append(num_frames)
        return find_alignment(model, tokenizer, text_tokens, mel, num_frames, **kwargs)

    monkeypatch.setattr(whisper.timing, "find_alignment", spy_alignment)
    clip = noise(2.0)
    rt = runtime(model, adaptive_margin_s=3.0, max_tokens_per_second=4.0)

    plain = rt.transcribe(clip)
    assert alignments == [] and plain.words == ()
    timed = rt.transcribe(clip, options=TranscribeOptions(word_timestamps=True))
    # one alignment per decoding window: the clip's 200 mel frames, then (whisper moves each next
    # window to the last word's end) what is left after the words found so far
    assert alignments[0] == 200 and alignments == sorted(alignments, reverse=True)
    # the alignment's forward pass saw the same windowed frames as the decoding, not a 30-s window
    assert set(spy.mel_frames) == {2 * math.ceil((2.0 + 3.0) * SAMPLE_RATE / 320)}
    assert timed.words and all(w.word.strip() for w in timed.words)
    assert all(0.0 <= w.start <= w.end <= timed.duration for w in timed.words)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(timed.words, timed.words[1:]))
    assert all(0.0 <= w.probability <= 1.0 for w in timed.words)


def test_prompt_temperature_and_translation_reach_whisper(model: Whisper, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict] = []
    transcribe = whisper.transcribe

    def spy(model, audio, **kwargs):
        seen.append(kwargs)
        return transcribe(model, audio, **kwargs)

    monkeypatch.setattr(whisper, "transcribe", spy)
    rt = runtime(model, max_tokens_per_second=1.0)
    rt.transcribe(noise(0.5), options=TranscribeOptions(prompt="<|endoftext|> Chorus", temperature=0.5))
    rt.transcribe(noise(0.5), options=TranscribeOptions(task="translate"))
    first, second = seen
    # special-token spellings are text, never tokens (whisper's tokenizer would refuse them)
    assert first["initial_prompt"] == "< |endoftext|> Chorus" and first["carry_initial_prompt"]
    assert (first["temperature"], first["task"], first["language"], first["word_timestamps"]) == (0.5, "transcribe", "en", False)
    # a translation detects the spoken language: the configured default ("en") is for transcriptions
    assert (second["task"], second["language"], second["initial_prompt"]) == ("translate", None, None)
    english_only = runtime(tiny_whisper(replace(TINY, n_vocab=51864)))
    with pytest.raises(MediaError, match="cannot translate"):
        english_only.transcribe(noise(0.5), options=TranscribeOptions(task="translate"))


# -- config and loading --------------------------------------------------------------------------


def test_config_validation() -> None:
    assert WhisperConfig().model == "packaged" and WhisperConfig().adaptive_window
    assert WhisperConfig(model="small").model == "small"
    assert WhisperConfig(model="/models/base.pt").model == "/models/base.pt"
    assert WhisperConfig(language="English").language == "en"
    with pytest.raises(pydantic.ValidationError, match="tiny"):  # lists the known names
        WhisperConfig(model="enormous")
    with pytest.raises(pydantic.ValidationError):
        WhisperConfig(adaptive_windw=False)
    with pytest.raises(pydantic.ValidationError):
        WhisperConfig(adaptive_margin_s=-1)
    with pytest.raises(pydantic.ValidationError):
        WhisperConfig(limits={"max_duration_s": 10, "bogus": 1})
    assert WhisperConfig(device="auto").device == "auto" and WhisperConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(pydantic.ValidationError, match="torch device"):
        WhisperConfig(device="gpu")
    for field in WhisperConfig.model_fields.values():
        assert field.description


def test_from_config_loads_a_local_checkpoint(tmp_path: Path, model: Whisper) -> None:
    path = tmp_path / "tiny.pt"
    torch.save({"dims": TINY.__dict__, "model_state_dict": model.state_dict()}, path)
    rt = WhisperRuntime.from_config(WhisperConfig(model=str(path), device="cpu", limits={"max_duration_s": 1.0}))
    assert rt.feature_dim == TINY.n_audio_state and rt.model.dims == TINY
    torch.testing.assert_close(rt.model.state_dict()["encoder.conv1.weight"], model.state_dict()["encoder.conv1.weight"])
    with pytest.raises(FileNotFoundError):
        WhisperRuntime.from_config(WhisperConfig(model=str(tmp_path / "missing.pt")))


def test_runtime_decode_applies_its_limits(model: Whisper) -> None:
    from modalities.speech import to_wav_bytes

    rt = runtime(model, limits={"max_duration_s": 1.0})
    assert len(rt.decode(to_wav_bytes(noise(0.5)))) == SAMPLE_RATE // 2
    with pytest.raises(MediaError, match="limit"):
        rt.decode(to_wav_bytes(noise(1.5)))


def test_clean_segments_drops_silence_loops_and_repeats() -> None:
    from modalities.audio.whisper import clean_segments

    audio = np.concatenate([noise(2.0), np.zeros(SAMPLE_RATE, np.float32)])  # 2 s sound, 1 s silence

    def seg(start, end, text, cr=1.2, ns=0.1):
        return {"start": start, "end": end, "text": text, "compression_ratio": cr, "no_speech_prob": ns}

    kept = clean_segments(
        [
            seg(0.0, 1.0, " Hello there."),
            seg(1.0, 1.5, " hello, there"),  # same words back to back: a repeat
            seg(1.0, 2.0, " Goodbye.", cr=3.0, ns=0.2),  # repetitive but confidently speech: kept
            seg(1.5, 2.0, " I'm going to the next room.", cr=9.0, ns=0.95),  # loop over non-speech
            seg(2.0, 3.0, " you"),  # over digital silence
            seg(2.5, 9.0, "  "),  # empty, and past the end
        ],
        audio,
    )
    assert [s["text"] for s in kept] == [" Hello there.", " Goodbye."]

    model = tiny_whisper()
    silent = runtime(model, max_tokens_per_second=1.0).transcribe(np.zeros(2 * SAMPLE_RATE, np.float32))
    assert silent.text == "" and silent.segments == ()
