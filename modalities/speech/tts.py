"""Text to speech: sentence chunking, the engines (hibari, espeak-ng) and the `Synthesizer` that maps a
client's voice name onto one of them. Torch-free; every engine returns mono float32 at OUTPUT_RATE.

Streaming is sentence by sentence: `Synthesizer.stream` yields each sentence's audio as soon as it is
spoken, so the first bytes of a long answer leave after one sentence's synthesis (~30 ms with hibari).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import threading
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

import numpy as np
import soxr

from modalities.speech.config import OUTPUT_RATE, SpeechConfig, VoiceSpec
from modalities.speech.espeak import ESPEAK, SYNTH_TIMEOUT_S, speak
from modalities.speech.sentences import split_sentences

if TYPE_CHECKING:
    from hibari import Hibari

__all__ = ["EspeakEngine", "HibariEngine", "SpeechEngine", "Synthesizer", "UnknownVoice", "split_sentences"]


_OTHER_LANGUAGE = re.compile(r"\((\S+) \d+\)")  # `espeak-ng --voices`' Other Languages: "(en-gb 3)(en 5)"


def _speakable(chunk: str) -> bool:
    return any(c.isalnum() for c in chunk)


def _check_speed(speed: float) -> None:
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number, got {speed}")


class SpeechEngine(Protocol):
    """A text-to-speech engine. `synthesize` returns mono float32 [n] at OUTPUT_RATE in [-1, 1]."""

    name: str

    def synthesize(self, text: str, voice: str, speed: float) -> np.ndarray: ...

    def voices(self) -> list[str]:
        """The engine's voices usable offline (on these machines)."""
        ...


# hibari reads numbers as words up to its largest scale and fails past it (an IndexError at 10**36):
# digit runs longer than a phone or card number are read digit by digit, as a person would.
_NUMBER = re.compile(r"\d(?:[\d,]*\d)?")
MAX_NUMBER_DIGITS = 18


def _read_long_numbers(text: str) -> str:
    def spell(match: re.Match[str]) -> str:
        digits = match.group().replace(",", "")
        return " ".join(digits) if len(digits) > MAX_NUMBER_DIGITS else match.group()

    return _NUMBER.sub(spell, text)


class HibariEngine:
    """hibari: a small neural English voice (ONNX), ~20x faster than real time on one core.

    Only "heart" ships inside the wheel; hibari downloads its other voices on first use, which these
    machines cannot do, so they are refused. The model loads once, on first use, under a lock.

    Thread safety (checked against hibari 0.2.1's source and by running 8 threads against sequential
    results, bit-identical with a fixed seed): synthesis needs no lock. An onnxruntime session's `run`
    is thread-safe, the G2P keeps no state between calls and each call makes its own noise generator.
    The only races are hibari's lazily built G2P and OOV network, so loading builds both eagerly.

    Speed: hibari's model is trained for 0.5..2.0. A speed outside that range is synthesised at the
    clamped speed, and the remaining factor is applied by resampling (the clip is played faster or
    slower as a whole), which shifts the pitch by that factor too: honest and artefact-free, unlike a
    time stretch, and only reached at OpenAI's extremes (0.25..0.5, 2..4).

    `seed` fixes hibari's noise component so the same text gives the same audio (None: random).
    """

    name = "hibari"
    OFFLINE_VOICES = ("heart",)
    MIN_SPEED, MAX_SPEED = 0.5, 2.0

    def __init__(self, threads: int = 1, seed: int | None = 0) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._threads = threads
        self._seed = seed
        self._tts: Hibari | None = None
        self._lock = threading.Lock()

    def _model(self) -> Hibari:
        if self._tts is None:
            with self._lock:
                if self._tts is None:
                    from hibari import Hibari

                    tts = Hibari(voice="heart", threads=self._threads)
                    _ = tts.g2p.oov  # build the lazy G2P and its OOV net now, not racily on first use
                    self._tts = tts
        return self._tts

    def voices(self) -> list[str]:
        return list(self.OFFLINE_VOICES)

    def synthesize(self, text: str, voice: str, speed: float) -> np.ndarray:
        """Text -> float32 [n] at OUTPUT_RATE (hibari's own rate)."""
        if voice not in self.OFFLINE_VOICES:
            raise ValueError(f"hibari voice {voice!r} is not available offline; use one of: {', '.join(self.OFFLINE_VOICES)}")
        _check_speed(speed)
        model_speed = min(max(speed, self.MIN_SPEED), self.MAX_SPEED)
        # NFKC first: hibari's number reader takes superscript, subscript and circled digits for digits
        # and then fails on int() ("¹", "①"); NFKC makes them plain digits (and "²" in "mc²" a 2)
        text = _read_long_numbers(unicodedata.normalize("NFKC", text))
        audio = np.asarray(self._model()(text, speed=model_speed, seed=self._seed), dtype=np.float32)
        rest = speed / model_speed
        if rest != 1.0 and audio.size:
            # Read the clip as if recorded at rate*rest and convert back: rest x faster, and higher.
            audio = soxr.resample(audio, OUTPUT_RATE * rest, OUTPUT_RATE)
        return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


class EspeakEngine:
    """espeak-ng (CLI): formant synthesis in ~100 languages; robotic, but every voice is offline.

    Speed 1.0 is espeak-ng's default 175 words per minute, scaled by the speed and clamped to the
    80..450 wpm espeak-ng accepts (so OpenAI's 0.25 and 4.0 come out at 80 and 450 wpm). espeak-ng
    speaks at 22.05 kHz; the audio is resampled to OUTPUT_RATE.
    """

    name = "espeak"
    BASE_WPM = 175
    MIN_WPM, MAX_WPM = 80, 450

    def __init__(self) -> None:
        self._voices: list[str] | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _exe() -> str:
        exe = shutil.which(ESPEAK)
        if exe is None:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
        return exe

    def voices(self) -> list[str]:
        """The languages of `espeak-ng --voices` ("en-us", "de", ...), sorted; cached. Both the Language
        column and the Other Languages one ("(fr 5)"), which `-v` accepts too."""
        with self._lock:
            if self._voices is None:
                proc = subprocess.run([self._exe(), "--voices"], capture_output=True, timeout=SYNTH_TIMEOUT_S, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"espeak-ng --voices failed: {proc.stderr.decode(errors='replace').strip()}")
                rows = proc.stdout.decode(errors="replace").splitlines()[1:]  # the first line is the header
                names = {row.split()[1] for row in rows if len(row.split()) > 1}
                names |= set(_OTHER_LANGUAGE.findall("\n".join(rows)))  # "fr" is only fr-fr's "(fr 5)"
                self._voices = sorted(names)
            return list(self._voices)

    def synthesize(self, text: str, voice: str, speed: float) -> np.ndarray:
        """Text -> float32 [n] at OUTPUT_RATE. `voice` is a language from `voices()`, optionally with an
        espeak-ng variant ("en-gb+m3")."""
        if voice.split("+", 1)[0] not in self.voices():
            raise ValueError(f"espeak-ng has no voice {voice!r}; `espeak-ng --voices` lists them (e.g. en-us, en-gb, de, fr)")
        _check_speed(speed)
        wpm = min(max(round(self.BASE_WPM * speed), self.MIN_WPM), self.MAX_WPM)
        mono, rate = speak(text, voice, wpm)
        if rate != OUTPUT_RATE:
            mono = soxr.resample(mono, rate, OUTPUT_RATE)
        return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


# hibari pads each sentence with ~0.3 s of silence before and ~0.5 s after: the first would delay
# the first sound a caller hears, both together leave ~0.8 s between sentences. Kept: a short lead-in
# and a sentence-sized pause (a full tail after the last sentence).
SILENCE_LEVEL = 10 ** (-50 / 20)  # -50 dBFS
LEAD_IN_S, PAUSE_S = 0.03, 0.25


def trim_silence(audio: np.ndarray, last: bool = False, rate: int = OUTPUT_RATE) -> np.ndarray:
    """`audio` with its leading silence cut to LEAD_IN_S and, unless `last`, its trailing silence to
    PAUSE_S; all-silent audio is returned as it is."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL)
    if loud.size == 0:
        return audio
    start = max(0, int(loud[0]) - int(LEAD_IN_S * rate))
    end = len(audio) if last else min(len(audio), int(loud[-1]) + 1 + int(PAUSE_S * rate))
    return audio[start:end]


class UnknownVoice(ValueError):
    """A voice name that is not in `SpeechConfig.voices`; the message lists the configured ones."""


class Synthesizer:
    """Client voice names -> engines -> audio. `engines` (by engine name, "hibari"/"espeak") replaces
    the default engines, e.g. with a fake in tests; the others are built on first use, so a
    deployment whose voices are all hibari never looks for espeak-ng."""

    def __init__(self, config: SpeechConfig, engines: Mapping[str, SpeechEngine] | None = None) -> None:
        self._config = config
        self._engines: dict[str, SpeechEngine] = dict(engines or {})
        self._factories: dict[str, Callable[[], SpeechEngine]] = {
            "hibari": lambda: HibariEngine(config.threads),
            "espeak": EspeakEngine,
        }
        self._lock = threading.Lock()

    def voice_names(self) -> list[str]:
        """The voice names clients may use, sorted."""
        return sorted(self._config.voices)

    def _engine(self, name: str) -> SpeechEngine:
        with self._lock:
            if name not in self._engines:
                self._engines[name] = self._factories[name]()
            return self._engines[name]

    def _resolve(self, voice: str) -> VoiceSpec:
        spec = self._config.voices.get(voice)
        if spec is None:
            raise UnknownVoice(f"unknown voice {voice!r}; configured voices: {', '.join(self.voice_names())}")
        return spec

    def stream(self, text: str, voice: str, speed: float = 1.0) -> Iterator[np.ndarray]:
        """One float32 [n] array at OUTPUT_RATE per sentence chunk of `text`, each as soon as it is ready.

        The arguments are checked here, before the first chunk is asked for: `UnknownVoice` for a
        voice not configured, ValueError for empty or too long text or a non-positive speed. Chunks
        with nothing speakable ("...", "—") are skipped, as are chunks an engine renders as silence
        of zero length. The voice's own `speed` multiplies the request's.
        """
        spec = self._resolve(voice)
        if not text.strip():
            raise ValueError("input text is empty")
        if len(text) > self._config.max_input_chars:
            raise ValueError(f"input is {len(text)} characters, over the {self._config.max_input_chars}-character limit")
        _check_speed(speed)
        chunks = [c for c in split_sentences(text) if _speakable(c)]
        return self._chunks(chunks, spec, speed * spec.speed)

    def _chunks(self, chunks: list[str], spec: VoiceSpec, speed: float) -> Iterator[np.ndarray]:
        engine = self._engine(spec.engine)
        for i, chunk in enumerate(chunks):
            audio = trim_silence(engine.synthesize(chunk, spec.voice, speed), last=i == len(chunks) - 1)
            if audio.size:
                yield audio

    def synthesize(self, text: str, voice: str, speed: float = 1.0) -> np.ndarray:
        """The whole clip: `stream`'s chunks concatenated, float32 [n] at OUTPUT_RATE."""
        parts = list(self.stream(text, voice, speed))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
