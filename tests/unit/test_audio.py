"""Audio decoding, limits, resampling and log-mel."""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import pytest
import soundfile as sf
import torch
import whisper.audio

from modalities.audio.decode import (
    DEFAULT_LIMITS,
    SAMPLE_RATE,
    WINDOW_MEL_FRAMES,
    AudioLimits,
    decode_audio,
    feature_frames,
    resample,
)
from modalities.audio.mel import log_mel
from modalities.errors import MediaError
from tests.helpers.media import wav_header
from tests.helpers.memory import peak_bytes

FORMATS = {  # soundfile format, subtype
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def sine(freq: float, seconds: float, rate: int = SAMPLE_RATE, amp: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(audio: np.ndarray, rate: int, fmt: str = "wav") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=FORMATS[fmt][0], subtype=FORMATS[fmt][1])
    return buf.getvalue()


def peak_hz(audio: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])



@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_decodes_each_format_to_16k_mono(fmt: str) -> None:
    audio = decode_audio(encode(sine(440, 2.0, 22_050), 22_050, fmt))

    assert audio.dtype == np.float32 and audio.ndim == 1
    # mp3 adds encoder delay/padding (a frame or two); the others are sample-exact up to resampling
    tolerance = 0.1 if fmt == "mp3" else 0.005
    assert abs(len(audio) / SAMPLE_RATE - 2.0) < tolerance
    assert abs(peak_hz(audio) - 440) < 2
    assert 0.2 < np.abs(audio).max() < 0.6


def test_resamples_44k_stereo_to_16k_mono_by_mean() -> None:
    rate = 44_100
    stereo = np.stack([sine(440, 3.0, rate), sine(1000, 3.0, rate)], axis=1)
    audio = decode_audio(encode(stereo, rate))

    assert abs(len(audio) - 3 * SAMPLE_RATE) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    top_two = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert abs(top_two[0] - 440) < 1 and abs(top_two[1] - 1000) < 1
    # mean downmix: each tone at half amplitude, so the mix peaks near 0.4, not 0.8
    assert np.abs(audio).max() < 0.45


def test_resample_function_preserves_frequency_and_length() -> None:
    out = resample(sine(3000, 1.0, 48_000), 48_000)
    assert len(out) == SAMPLE_RATE and abs(peak_hz(out) - 3000) < 2
    same = sine(100, 0.5)
    assert resample(same, SAMPLE_RATE) is same or np.array_equal(resample(same, SAMPLE_RATE), same)


def test_streaming_wav_placeholder_length_is_accepted() -> None:
    # espeak-ng / sox / ffmpeg writing to a pipe put ~2 GiB placeholders in the header
    body = (sine(300, 1.0) * 32767).astype("<i2").tobytes()
    data = wav_header(rate=SAMPLE_RATE, data_size=0x7FFFF000) + body
    audio = decode_audio(data)
    assert len(audio) == SAMPLE_RATE and abs(peak_hz(audio) - 300) < 2


# -- bad input -----------------------------------------------------------------------------------


def _rejects(data: bytes, limits: AudioLimits = DEFAULT_LIMITS, code: str | None = None) -> MediaError:
    with pytest.raises(MediaError) as info:
        decode_audio(data, limits)
    err = info.value
    assert err.param == "audio" and len(err.message) < 200 and "\\x" not in err.message
    if code:
        assert err.code == code
    return err


def test_rejects_empty_and_random_bytes() -> None:
    _rejects(b"", code="empty_audio")
    _rejects(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _rejects(b"RIFF\x00\x00\x00\x00WAVE")


def test_rejects_truncated_wav_and_flac() -> None:
    clip = sine(440, 2.0)
    wav = encode(clip, SAMPLE_RATE, "wav")
    assert "truncated" in _rejects(wav[: len(wav) // 2]).message
    flac = encode(clip, SAMPLE_RATE, "flac")
    _rejects(flac[: len(flac) // 2])
    _rejects(flac[:30])  # cut inside the metadata


def test_rejects_zero_length_audio() -> None:
    _rejects(wav_header(rate=SAMPLE_RATE, data_size=0), code="empty_audio")
    _rejects(encode(np.zeros(0, np.float32), SAMPLE_RATE, "flac"), code="empty_audio")


def test_rejects_over_limits() -> None:
    data = encode(sine(440, 3.0), SAMPLE_RATE)
    _rejects(data, AudioLimits(max_duration_s=2.0), code="audio_too_long")
    _rejects(data, AudioLimits(max_input_bytes=len(data) - 1), code="audio_too_large")
    assert len(decode_audio(data, AudioLimits(max_duration_s=3.0))) == 3 * SAMPLE_RATE


def test_rejects_zero_channels_and_absurd_rates() -> None:
    body = b"\0" * 1600
    _rejects(wav_header(channels=0, data_size=len(body)) + body)
    _rejects(wav_header(channels=64, data_size=len(body)) + body)
    _rejects(wav_header(rate=1, data_size=len(body)) + body)
    _rejects(wav_header(rate=1_000_000_000, data_size=len(body)) + body)


def test_rejects_non_finite_samples_and_unsupported_formats() -> None:
    bad = sine(440, 0.5)
    bad[100] = np.nan
    buf = io.BytesIO()
    sf.write(buf, bad, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    _rejects(buf.getvalue())
    aiff = io.BytesIO()
    sf.write(aiff, sine(440, 0.5), SAMPLE_RATE, format="AIFF")
    _rejects(aiff.getvalue(), code="unsupported_format")




def test_forged_gigabyte_wav_header_allocates_only_what_is_there() -> None:
    body = b"\0\1" * 8000  # 1 s of real 8 kHz samples
    limits = AudioLimits(max_duration_s=60)

    # Claims 1.5 GB (~27 hours at 8 kHz): a real length, contradicted by the bytes -> truncated.
    forged = wav_header(data_size=1_500_000_000) + body
    peak = peak_bytes(lambda: _rejects(forged, limits))
    assert peak < 10_000_000  # well under the claimed 1.5 GB (and the 4 GB float32 it would decode to)

    # Claims ~4 GB in the streaming-placeholder range: decoded as the 1 s actually present.
    placeholder = wav_header(data_size=0xFFFFFFF0) + body
    out: list[np.ndarray] = []
    peak = peak_bytes(lambda: out.append(decode_audio(placeholder, limits)))
    assert len(out[0]) == SAMPLE_RATE and peak < 10_000_000


def test_long_real_body_is_rejected_from_the_header() -> None:
    # 8-bit 4 kHz mono packs 300 s into 1.2 MB, far over a 10 s limit: rejected before any read.
    body = np.full(4_000 * 300, 128, np.uint8).tobytes()
    data = wav_header(rate=4_000, bits=8, data_size=0x7FFFF000) + body
    peak = peak_bytes(lambda: _rejects(data, AudioLimits(max_duration_s=10), code="audio_too_long"))
    assert peak < 1_000_000


def test_block_loop_caps_a_header_that_under_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    # Headers can under-report too (mp3 frame counts are estimates): make the header claim 1 s, so
    # only the block loop stands between 300 s of samples and memory.
    body = np.full(4_000 * 300, 128, np.uint8).tobytes()
    data = wav_header(rate=4_000, bits=8, data_size=len(body)) + body
    real_info = sf.info

    def lying_info(file):
        info = real_info(file)
        info.frames = 4_000
        return info

    monkeypatch.setattr(sf, "info", lying_info)
    peak = peak_bytes(lambda: _rejects(data, AudioLimits(max_duration_s=10), code="audio_too_long"))
    # all 300 s as 16 kHz float32 would be 19 MB; the cap stops at ~10 s (0.6 MB) plus one block
    assert peak < 5_000_000


def test_flac_header_claiming_hours_is_rejected_before_reading() -> None:
    flac = bytearray(encode(sine(440, 0.5), SAMPLE_RATE, "flac"))
    # STREAMINFO starts at byte 8; total samples are the low 36 bits of its bytes 10..17.
    (packed,) = struct.unpack(">Q", flac[18:26])
    struct.pack_into(">Q", flac, 18, (packed & ~((1 << 36) - 1)) | ((1 << 36) - 1))
    assert sf.info(io.BytesIO(bytes(flac))).frames == (1 << 36) - 1
    peak = peak_bytes(lambda: _rejects(bytes(flac), code="audio_too_long"))
    assert peak < 5_000_000


# -- mel and frames ------------------------------------------------------------------------------


@pytest.mark.parametrize(("samples", "frames"), [(1, 1), (319, 1), (320, 1), (321, 2), (16_000, 50), (480_000, 1500)])
def test_feature_frames_is_ceil_samples_over_320(samples: int, frames: int) -> None:
    assert feature_frames(samples) == frames == math.ceil(samples / 320)


def test_log_mel_matches_whisper_full_window_and_slices() -> None:
    clip = sine(440, 2.3)
    full = log_mel(clip, 80)
    reference = whisper.audio.pad_or_trim(
        whisper.audio.log_mel_spectrogram(clip, 80, padding=whisper.audio.N_SAMPLES), WINDOW_MEL_FRAMES
    )
    assert full.shape == (80, WINDOW_MEL_FRAMES)
    torch.testing.assert_close(full, reference)

    short = log_mel(clip, 80, n_frames=2 * feature_frames(len(clip)))
    assert short.shape == (80, 230)
    torch.testing.assert_close(short, full[:, :230])
    assert log_mel(clip, 128, n_frames=10).shape == (128, 10)
    with pytest.raises(ValueError):
        log_mel(clip, 80, n_frames=3001)
