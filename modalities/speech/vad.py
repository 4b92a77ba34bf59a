"""Server voice activity detection for /v1/realtime: Silero VAD (ONNX, via onnxruntime; no torch) and a
streaming turn detector over it that emits OpenAI's `speech_started` / `speech_stopped` events.

Audio is mono float32 at 16 kHz (`modalities.audio.decode.SAMPLE_RATE`); the model scores 512-sample
(32 ms) windows, so event positions have 32 ms resolution.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from modalities.audio.decode import SAMPLE_RATE

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["SileroVad", "StreamingVad", "VadEvent", "VadModel", "silero_model_path"]

WINDOW_SAMPLES = 512  # what Silero scores at 16 kHz (32 ms)
CONTEXT_SAMPLES = 64  # the previous window's tail, prepended to each window
STATE_SHAPE = (2, 1, 128)  # Silero's recurrent state, batch 1
HYSTERESIS = 0.15  # speech ends below threshold - 0.15, as Silero's VADIterator does
MAX_TURN_MS = 600_000  # a turn is cut here (Whisper input is capped at 10 min: AudioLimits.max_duration_s)
SILERO_MODEL_FILE = "silero_vad.onnx"


def silero_model_path() -> Path:
    """Silero's ONNX model inside the silero-vad wheel. Located with importlib's spec of the package
    rather than `importlib.resources.files("silero_vad.data")`, which would run the package's
    `__init__` and so import torch into a process that needs none."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / SILERO_MODEL_FILE
    if not path.is_file():
        raise RuntimeError(f"silero-vad's model is missing: {path}")
    return path


@functools.cache
def _session(path: str) -> onnxruntime.InferenceSession:
    """One session per model file, shared by every stream (`run` is thread-safe; state lives outside)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # one 32 ms window is ~0.1 ms of work
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class VadModel(Protocol):
    """A stateful speech scorer: `model(window)` for consecutive windows float32 [WINDOW_SAMPLES] at
    16 kHz -> speech probability in [0, 1]; `reset()` forgets the stream."""

    def __call__(self, window: np.ndarray) -> float: ...

    def reset(self) -> None: ...


class SileroVad:
    """Silero VAD on onnxruntime for one audio stream: the model's recurrent state and its 64-sample
    context carry from window to window, so windows must be fed in order (one instance per stream)."""

    _load_lock = threading.Lock()

    def __init__(self, path: str | Path | None = None) -> None:
        with self._load_lock:
            self._session = _session(str(path or silero_model_path()))
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        window = np.asarray(window, dtype=np.float32)
        if window.shape != (WINDOW_SAMPLES,):
            raise ValueError(f"Silero scores windows of shape ({WINDOW_SAMPLES},), got {window.shape}")
        x = np.concatenate([self._context, window])[None, :]  # [1, 576]
        prob, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._rate})
        self._context = window[-CONTEXT_SAMPLES:].copy()
        return float(prob[0, 0])


@dataclass(frozen=True)
class VadEvent:
    """`at_ms`: position in the stream since the last reset (16 kHz samples -> ms). For speech_started,
    where speech began (its first window over the threshold); for speech_stopped, where the silence
    that ended it began."""

    kind: Literal["speech_started", "speech_stopped"]
    at_ms: int


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


def _samples(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


class _AudioLog:
    """The stream's recent audio as a list of fed chunks, addressed by absolute sample position;
    `trim` forgets what lies wholly before a position. Appends are O(1) whatever the turn length."""

    def __init__(self) -> None:
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start sample, audio)
        self.end = 0

    def append(self, audio: np.ndarray) -> None:
        if audio.size:
            self._chunks.append((self.end, audio))
            self.end += audio.size

    def trim(self, keep_from: int) -> None:
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].size <= keep_from:
            self._chunks.pop(0)

    def slice(self, start: int, stop: int) -> np.ndarray:
        parts = [
            audio[max(start - at, 0) : max(stop - at, 0)]
            for at, audio in self._chunks
            if at < stop and at + audio.size > start
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class StreamingVad:
    """Turn detection on a live 16 kHz stream: `feed` audio of any length, get the events it completes.

    A window whose probability reaches `threshold` starts speech. A window under `threshold - HYSTERESIS`
    starts a silence (or continues one); one at or over `threshold` cancels it; windows in between do
    neither. Speech stops at a window under the lower threshold once the silence has lasted
    `silence_duration_ms`, as in Silero's VADIterator. A turn longer than `max_turn_ms` is cut there
    (speech_stopped at the cut) so that memory stays bounded.

    After speech_stopped, `turn_audio()` is the turn: from `prefix_padding_ms` before the speech began
    (never before the stream's start) to where the silence began, float32 at 16 kHz.
    `model`: a `VadModel` (default: a new `SileroVad`, i.e. state per stream).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        model: VadModel | None = None,
        max_turn_ms: int = MAX_TURN_MS,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if prefix_padding_ms < 0 or silence_duration_ms < 0 or max_turn_ms <= 0:
            raise ValueError("prefix_padding_ms and silence_duration_ms must be >= 0 and max_turn_ms > 0")
        self.threshold = threshold
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.max_turn_ms = max_turn_ms
        self._model: VadModel = model if model is not None else SileroVad()
        self.reset()

    def reset(self) -> None:
        """Forget the stream: positions restart at 0, the model state and any turn audio are dropped."""
        self._model.reset()
        self._log = _AudioLog()
        self._pending = np.zeros(0, dtype=np.float32)  # fed samples not yet scored (< one window)
        self._pos = 0  # absolute position of the next window to score
        self._speech_start: int | None = None
        self._silence_start: int | None = None
        self._turn: np.ndarray | None = None

    @property
    def in_speech(self) -> bool:
        return self._speech_start is not None

    @property
    def silence_since_ms(self) -> int | None:
        """Where the silence inside the current speech began (ms since the last reset), while it has
        not yet lasted `silence_duration_ms`; None outside speech or while speaking. A caller may
        start work on the turn from here, on the guess that the speech has ended."""
        return None if self._silence_start is None or self._speech_start is None else _ms(self._silence_start)

    def turn_audio(self) -> np.ndarray | None:
        """The last finished turn's audio (float32 [n] at 16 kHz), or None before any turn has ended."""
        return self._turn

    def feed(self, pcm16k: np.ndarray) -> list[VadEvent]:
        """Mono float32 [n] at 16 kHz, any n -> the events its windows complete, in order."""
        audio = np.array(pcm16k, dtype=np.float32)  # a copy: callers reuse their buffers
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio of shape [n], got shape {audio.shape}")
        self._log.append(audio)
        self._pending = np.concatenate([self._pending, audio]) if self._pending.size else audio
        events: list[VadEvent] = []
        n_windows = self._pending.size // WINDOW_SAMPLES
        for i in range(n_windows):
            window = self._pending[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
            event = self._step(float(self._model(window)))
            if event is not None:
                events.append(event)
        self._pending = self._pending[n_windows * WINDOW_SAMPLES :].copy()
        keep_from = self._pos - _samples(self.prefix_padding_ms)
        if self._speech_start is not None:
            keep_from = self._speech_start - _samples(self.prefix_padding_ms)
        self._log.trim(keep_from)
        return events

    def _step(self, prob: float) -> VadEvent | None:
        """Advance one window (at self._pos) with its speech probability."""
        start, self._pos = self._pos, self._pos + WINDOW_SAMPLES
        if self._speech_start is None:
            if prob >= self.threshold:
                self._speech_start, self._silence_start = start, None
                return VadEvent("speech_started", _ms(start))
            return None
        if prob >= self.threshold:
            self._silence_start = None
        elif prob < self.threshold - HYSTERESIS:
            if self._silence_start is None:
                self._silence_start = start
            if self._pos - self._silence_start >= _samples(self.silence_duration_ms):
                return self._stop(self._silence_start)
        if self._pos - self._speech_start >= _samples(self.max_turn_ms):
            return self._stop(self._pos)
        return None

    def _stop(self, at: int) -> VadEvent:
        assert self._speech_start is not None
        begin = max(self._speech_start - _samples(self.prefix_padding_ms), 0)
        self._turn = self._log.slice(begin, at)
        self._speech_start = self._silence_start = None
        return VadEvent("speech_stopped", _ms(at))
