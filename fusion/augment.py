"""Channel augmentation for training speech: level, background noise, the telephone band.

What Ultravox's AUGMENTATIONS lists and speech LLMs commonly use, reduced to what a CPU corpus build
can afford per clip (the speaking-rate change is the synthesizer's own, `fusion.synthesizers`):

- `gain`: the clip's peak set to a level drawn in dB (synthesizers differ by 10 dB among themselves);
- `noise`: white, pink or brown noise at an SNR drawn from `SNR_DB`;
- `telephone`: 300-3,400 Hz band, 8 kHz sample rate and G.711 μ-law 8-bit quantisation, then back to
  16 kHz (resampling by soxr).

Everything is drawn from a `numpy` generator seeded by the caller, so a clip is re-rendered exactly
(evaluation re-synthesizes clips for Whisper's transcripts rather than storing audio).
"""

from __future__ import annotations

import numpy as np
import soxr

from modalities.audio.decode import SAMPLE_RATE

KINDS = ("clean", "noise", "telephone", "noise+telephone")
TRAIN_WEIGHTS = (0.4, 0.25, 0.2, 0.15)
SNR_DB = (5.0, 30.0)
PEAK_DB = (-20.0, -1.0)
PHONE_RATE = 8000
PHONE_BAND_HZ = (300.0, 3400.0)
MU = 255.0


def draw(rng: np.random.Generator) -> str:
    """An augmentation kind for a training clip."""
    return str(rng.choice(KINDS, p=TRAIN_WEIGHTS))


def _colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if color == "white":
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    spectrum /= np.sqrt(freqs) if color == "pink" else freqs  # 1/f power, or 1/f² (brown)
    return np.fft.irfft(spectrum, n)


def add_noise(audio: np.ndarray, snr_db: float, color: str, rng: np.random.Generator) -> np.ndarray:
    noise = _colored_noise(audio.size, color, rng)
    signal_power = float(np.mean(audio.astype(np.float64) ** 2)) or 1e-12
    noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / (np.mean(noise**2) or 1e-12))
    return (audio + noise).astype(np.float32)


def telephone(audio: np.ndarray) -> np.ndarray:
    """Band-limit to 300-3,400 Hz, resample to 8 kHz, μ-law quantise, resample back to 16 kHz."""
    narrow = soxr.resample(audio.astype(np.float32), SAMPLE_RATE, PHONE_RATE)
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(narrow.size, 1 / PHONE_RATE)
    spectrum[(freqs < PHONE_BAND_HZ[0]) | (freqs > PHONE_BAND_HZ[1])] = 0
    narrow = np.clip(np.fft.irfft(spectrum, narrow.size), -1.0, 1.0)
    companded = np.sign(narrow) * np.log1p(MU * np.abs(narrow)) / np.log1p(MU)
    quantised = np.round((companded + 1) * 127.5) / 127.5 - 1  # 8 bits
    narrow = np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(MU)) / MU
    return soxr.resample(narrow.astype(np.float32), PHONE_RATE, SAMPLE_RATE).astype(np.float32)


def set_peak(audio: np.ndarray, peak_db: float) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        return audio.astype(np.float32)
    return (audio * (10 ** (peak_db / 20) / peak)).astype(np.float32)


def apply(audio: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`audio` (16 kHz float32) with augmentation `kind` (see KINDS) and a random level."""
    if kind not in KINDS:
        raise ValueError(f"unknown augmentation {kind!r}; one of {KINDS}")
    out = set_peak(audio, -3.0)
    if "noise" in kind:
        out = add_noise(out, float(rng.uniform(*SNR_DB)), str(rng.choice(["white", "pink", "brown"])), rng)
    if "telephone" in kind:
        out = telephone(out)
    return np.clip(set_peak(out, float(rng.uniform(*PEAK_DB))), -1.0, 1.0)
