"""Synthetic speech with the espeak-ng CLI (apt package `espeak-ng`), for tests and training data.

espeak-ng writes a 22.05 kHz 16-bit WAV to stdout; its header carries a placeholder length because
stdout cannot be seeked, which libsndfile handles by reading to the end of the bytes.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile as sf

from modalities.audio.decode import SAMPLE_RATE, resample

ESPEAK = "espeak-ng"
SYNTH_TIMEOUT_S = 60


def speak(text: str, voice: str = "en-us", speed_wpm: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """espeak-ng's own output for `text`: (mono float32 [n], its sample rate, 22.05 kHz)."""
    if not text.strip():
        raise ValueError("nothing to synthesize")
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    # Text goes in on stdin so that text starting with "-" is never taken for an option.
    proc = subprocess.run(
        [exe, "--stdout", "-v", voice, "-s", str(int(speed_wpm)), "-p", str(int(pitch))],
        input=text.encode("utf-8"),
        capture_output=True,
        timeout=SYNTH_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed (voice {voice!r}): {proc.stderr.decode(errors='replace').strip()}")
    audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    return audio.mean(axis=1), rate


def synthesize(text: str, voice: str = "en-us", speed_wpm: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` -> mono float32 [n] at SAMPLE_RATE (16 kHz, what Whisper reads).

    `voice` is an espeak-ng voice name (`espeak-ng --voices`), optionally with a variant ("en+f3");
    `speed_wpm` words per minute (espeak-ng accepts 80..450); `pitch` 0..99.
    """
    audio, rate = speak(text, voice, speed_wpm, pitch)
    return resample(audio, rate)


def to_wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono float32 [n] in [-1, 1] -> 16-bit PCM WAV bytes (values outside are clipped)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# A small customer-service corpus for end-to-end checks and benchmarks: no digits (a transcript
# writes "20" for "twenty", which word error rate would count as wrong) and a mix of ~2-5 s
# sentences. Voices and speeds vary accent, gender and pace (espeak-ng voice[+variant], wpm). Whisper
# base reads these at ~1-10 % WER each; the +f3/+f4 variants come out near 20 %, so they are left out.
SAMPLE_SENTENCES: tuple[str, ...] = (
    "Hello, I would like to return a damaged parcel.",
    "My order arrived yesterday but the box was completely crushed and the glass inside was broken.",
    "Can you tell me when my refund will be processed?",
    "I was charged twice for the same subscription this month.",
    "The delivery driver left the package at the wrong address, and nobody there has seen it.",
    "Please cancel my order and send me a confirmation email.",
    "I need to change the shipping address on my account before the parcel leaves the warehouse.",
    "The screen of my new phone is cracked.",
    "How long does it take to get a replacement?",
    "Could you please check the status of my complaint?",
    "The product description did not match what I received, so I would like a full refund.",
    "Thank you for your help, have a nice day.",
)
SAMPLE_VOICES: tuple[tuple[str, int], ...] = (
    ("en-us", 160),
    ("en-gb", 170),
    ("en-us+m3", 150),
    ("en-us", 190),
    ("en+m3", 140),
    ("en-us+f2", 170),
)


def sample_corpus() -> list[tuple[str, np.ndarray]]:
    """SAMPLE_SENTENCES spoken round-robin by SAMPLE_VOICES: [(text, audio [n] at 16 kHz)]."""
    out = []
    for i, text in enumerate(SAMPLE_SENTENCES):
        voice, wpm = SAMPLE_VOICES[i % len(SAMPLE_VOICES)]
        out.append((text, synthesize(text, voice=voice, speed_wpm=wpm)))
    return out
