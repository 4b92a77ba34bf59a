"""Stand-ins for the voice path's deployments and models, for the realtime and speech services'
unit tests (no Ray, no model): a Speech handle that 'speaks' 1 ms of silence per character, and a
loudness VAD with Silero's streaming interface."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.helpers.scripted import _Remote, _Stream


class FakeSpeechHandle:
    """`synthesize.remote(text, voice, speed, fmt)` → one chunk of 48 zero bytes (1 ms of 24 kHz
    s16le) per character; `gate`, when set, holds every sentence after the first until it is set."""

    def __init__(self, gate: asyncio.Event | None = None, fail: bool = False) -> None:
        self.sentences: list[tuple[str, str, float, str]] = []
        self.streams: list[_Stream] = []
        self.gate, self.fail = gate, fail
        self.synthesize = _Remote(self._synthesize)

    def options(self, **_options: Any) -> FakeSpeechHandle:
        return self

    def _synthesize(self, text: str, voice: str, speed: float, fmt: str) -> _Stream:
        self.sentences.append((text, voice, speed, fmt))
        first = len(self.sentences) == 1

        async def chunks():
            if self.fail:
                raise RuntimeError("speech engine down")
            if self.gate is not None and not first:
                await self.gate.wait()
            yield b"\0" * (48 * len(text))

        stream = _Stream(chunks())
        self.streams.append(stream)
        return stream


@dataclass
class VadEvent:
    kind: str
    at_ms: int


class LoudnessVad:
    """Speech is any 10 ms window louder than 0.1 (16 kHz input); it ends after `silence_ms` quiet."""

    def __init__(self, silence_ms: int = 200) -> None:
        self.silence_ms, self.pos_ms, self.in_speech, self.quiet_ms = silence_ms, 0, False, 0
        self.start_ms = 0
        self._rest = np.zeros(0, dtype=np.float32)

    @property
    def silence_since_ms(self) -> int | None:
        return self.pos_ms - self.quiet_ms if self.in_speech and self.quiet_ms else None

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        samples = np.concatenate([self._rest, samples])
        events = []
        n = len(samples) // 160
        for i in range(n):
            loud = float(np.abs(samples[i * 160 : (i + 1) * 160]).max()) > 0.1
            if loud and not self.in_speech:
                self.in_speech, self.start_ms = True, self.pos_ms
                events.append(VadEvent("speech_started", self.pos_ms))
            if self.in_speech:
                self.quiet_ms = 0 if loud else self.quiet_ms + 10
                if self.quiet_ms >= self.silence_ms:
                    self.in_speech = False
                    events.append(VadEvent("speech_stopped", self.pos_ms - self.silence_ms + 10))
            self.pos_ms += 10
        self._rest = samples[n * 160 :]
        return events


def pcm(seconds: float, loud: bool = False, rate: int = 24_000) -> bytes:
    """`seconds` of 24 kHz s16le: a 440 Hz tone at half scale (loud) or silence."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * 440 * t) if loud else np.zeros_like(t)
    return (wave * 32767).astype("<i2").tobytes()
