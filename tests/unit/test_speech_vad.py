"""Server VAD: the turn state machine on a fake model (event positions, prefix padding, hysteresis,
partial feeds, reset), and real Silero on silence and on espeak-ng speech between silences."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from modalities.audio.decode import SAMPLE_RATE
from modalities.speech.config import VadConfig
from modalities.speech.espeak import synthesize
from modalities.speech.vad import WINDOW_SAMPLES, SileroVad, StreamingVad, VadEvent, silero_model_path

WINDOW_MS = WINDOW_SAMPLES * 1000 // SAMPLE_RATE  # 32


class FakeModel:
    """Scores a window by its mean sample, so a test writes the probability of each window into the
    audio itself; records what it was given."""

    def __init__(self) -> None:
        self.windows: list[float] = []
        self.resets = 0

    def __call__(self, window: np.ndarray) -> float:
        assert window.shape == (WINDOW_SAMPLES,) and window.dtype == np.float32
        self.windows.append(float(window.mean()))
        return float(window.mean())

    def reset(self) -> None:
        self.resets += 1


def probs(*runs: tuple[float, int]) -> np.ndarray:
    """Audio whose consecutive windows score (prob, n_windows), run after run."""
    return np.concatenate([np.full(n * WINDOW_SAMPLES, p, dtype=np.float32) for p, n in runs])


def vad(**kwargs) -> StreamingVad:
    options = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500} | kwargs
    return StreamingVad(model=FakeModel(), **options)


def at(window: int) -> int:
    return window * WINDOW_MS


# silence_duration_ms 500 = 8000 samples: the 16th silent window (16 x 512 = 8192) ends the turn
SILENT_WINDOWS_TO_STOP = 16
TURN = probs((0.0, 10), (0.9, 20), (0.0, 30))  # speech in windows 10..29


def test_started_and_stopped_positions() -> None:
    detector = vad()
    assert detector.feed(TURN[: 10 * WINDOW_SAMPLES]) == [] and not detector.in_speech
    assert detector.feed(TURN[10 * WINDOW_SAMPLES : 11 * WINDOW_SAMPLES]) == [VadEvent("speech_started", at(10))]
    assert detector.in_speech
    # the stop comes with the 16th silent window (window 45), not a window before
    assert detector.feed(TURN[11 * WINDOW_SAMPLES : 45 * WINDOW_SAMPLES]) == []
    assert detector.feed(TURN[45 * WINDOW_SAMPLES : 46 * WINDOW_SAMPLES]) == [VadEvent("speech_stopped", at(30))]
    assert not detector.in_speech
    assert detector.feed(TURN[46 * WINDOW_SAMPLES :]) == []


def test_turn_audio_starts_prefix_padding_before_the_speech() -> None:
    detector = vad()
    assert detector.turn_audio() is None
    detector.feed(TURN)
    start = 10 * WINDOW_SAMPLES - 300 * SAMPLE_RATE // 1000
    np.testing.assert_array_equal(detector.turn_audio(), TURN[start : 30 * WINDOW_SAMPLES])


def test_prefix_padding_stops_at_the_start_of_the_stream() -> None:
    audio = probs((0.0, 2), (0.9, 10), (0.0, 20))
    detector = vad(prefix_padding_ms=1000)
    assert [e.kind for e in detector.feed(audio)] == ["speech_started", "speech_stopped"]
    np.testing.assert_array_equal(detector.turn_audio(), audio[: 12 * WINDOW_SAMPLES])


def test_hysteresis_band_neither_starts_cancels_nor_ends_a_silence() -> None:
    # threshold 0.5: speech ends only under 0.35; 0.4 is in between
    audio = probs((0.4, 5), (0.9, 5), (0.4, 30), (0.3, 1), (0.4, 20), (0.0, 1), (0.0, 5))
    events = vad().feed(audio)
    # 0.4 before the speech starts nothing; the 30 windows at 0.4 start no silence; the 0.3 window at
    # 40 does; the 0.4s after it don't cancel it nor end the turn: the next window under 0.35 does
    assert events == [VadEvent("speech_started", at(5)), VadEvent("speech_stopped", at(40))]


def test_speech_resuming_cancels_the_silence() -> None:
    audio = probs((0.9, 5), (0.0, SILENT_WINDOWS_TO_STOP - 1), (0.6, 1), (0.0, SILENT_WINDOWS_TO_STOP))
    events = vad().feed(audio)
    assert events == [VadEvent("speech_started", 0), VadEvent("speech_stopped", at(5 + SILENT_WINDOWS_TO_STOP))]


def test_two_turns_and_turn_audio_is_the_last_one() -> None:
    audio = np.concatenate([TURN, TURN])
    detector = vad()
    events = detector.feed(audio)
    n = TURN.size // WINDOW_SAMPLES
    assert events == [
        VadEvent("speech_started", at(10)), VadEvent("speech_stopped", at(30)),
        VadEvent("speech_started", at(n + 10)), VadEvent("speech_stopped", at(n + 30)),
    ]  # fmt: skip
    assert detector.turn_audio().size == 20 * WINDOW_SAMPLES + 300 * SAMPLE_RATE // 1000


@pytest.mark.parametrize("size", [1, 7, 333, WINDOW_SAMPLES, 5000])
def test_any_feed_size_gives_the_same_events_and_audio(size: int) -> None:
    whole = vad()
    expected = whole.feed(TURN)
    pieces = vad()
    events = [e for i in range(0, TURN.size, size) for e in pieces.feed(TURN[i : i + size])]
    assert events == expected
    np.testing.assert_array_equal(pieces.turn_audio(), whole.turn_audio())
    assert pieces._model.windows == whole._model.windows  # the same windows, in order
    assert whole._model.windows == pytest.approx([float(p) for p in TURN[::WINDOW_SAMPLES]])


def test_a_partial_window_is_scored_only_once_complete() -> None:
    detector = vad()
    assert detector.feed(np.full(WINDOW_SAMPLES - 1, 0.9, np.float32)) == []
    assert detector.feed(np.full(1, 0.9, np.float32)) == [VadEvent("speech_started", 0)]


def test_zero_silence_duration_stops_at_the_first_silent_window() -> None:
    events = vad(silence_duration_ms=0).feed(probs((0.9, 3), (0.0, 1)))
    assert events == [VadEvent("speech_started", 0), VadEvent("speech_stopped", at(3))]


def test_a_turn_longer_than_max_turn_ms_is_cut() -> None:
    detector = vad(max_turn_ms=1000)
    events = detector.feed(probs((0.9, 40)))
    assert events[:2] == [VadEvent("speech_started", 0), VadEvent("speech_stopped", at(32))]  # 32 x 32 ms >= 1 s
    assert detector.turn_audio().size == 32 * WINDOW_SAMPLES


def test_reset_restarts_positions_and_forgets_the_turn() -> None:
    detector = vad()
    detector.feed(TURN)
    detector.feed(probs((0.9, 3)))
    assert detector.in_speech
    detector.reset()
    assert not detector.in_speech and detector.turn_audio() is None
    assert detector._model.resets == 2  # once on construction, once now
    assert detector.feed(probs((0.0, 4), (0.9, 1))) == [VadEvent("speech_started", at(4))]


def test_the_caller_may_reuse_its_buffer() -> None:
    detector = vad()
    buffer = np.zeros(WINDOW_SAMPLES, np.float32)
    for p in [0.0] * 15 + [0.9] * 5 + [0.0] * 20:
        buffer[:] = p
        detector.feed(buffer)
    expected = probs((0.0, 15), (0.9, 5))[15 * WINDOW_SAMPLES - 300 * SAMPLE_RATE // 1000 :]
    np.testing.assert_array_equal(detector.turn_audio(), expected)


@pytest.mark.parametrize("kwargs", [{"threshold": 1.5}, {"prefix_padding_ms": -1}, {"silence_duration_ms": -5}])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        vad(**kwargs)


def test_stereo_is_refused() -> None:
    with pytest.raises(ValueError, match="mono"):
        vad().feed(np.zeros((2, 512), np.float32))


# -- real Silero ---------------------------------------------------------------------------------


def test_silero_model_is_found_without_importing_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "from modalities.speech.vad import StreamingVad\n"
        "StreamingVad().feed(np.zeros(2048, np.float32))\n"
        "print('torch' in sys.modules, 'silero_vad' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
    assert silero_model_path().name == "silero_vad.onnx" and silero_model_path().is_file()


def test_silero_scores_silence_low_and_refuses_other_window_sizes() -> None:
    model = SileroVad()
    assert max(model(np.zeros(WINDOW_SAMPLES, np.float32)) for _ in range(5)) < 0.1
    with pytest.raises(ValueError, match="512"):
        model(np.zeros(480, np.float32))


def test_silence_and_faint_noise_give_no_events() -> None:
    detector = StreamingVad(**VadConfig().model_dump())
    noise = (0.003 * np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE)).astype(np.float32)
    assert detector.feed(np.zeros(3 * SAMPLE_RATE, np.float32)) == []
    assert detector.feed(noise) == [] and not detector.in_speech


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthesize("Can you tell me when my refund will be processed?")


def test_speech_between_silences_is_one_turn(speech: np.ndarray) -> None:
    loud = np.nonzero(np.abs(speech) > 0.02)[0]
    true_start_ms = 1000 + loud[0] * 1000 // SAMPLE_RATE
    true_stop_ms = 1000 + loud[-1] * 1000 // SAMPLE_RATE
    silence = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([silence, speech, silence])
    config = VadConfig()
    detector = StreamingVad(**config.model_dump())
    chunk = SAMPLE_RATE // 50  # 20 ms, as a realtime client sends it
    events = [e for i in range(0, audio.size, chunk) for e in detector.feed(audio[i : i + chunk])]
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    assert abs(events[0].at_ms - true_start_ms) <= 300
    assert abs(events[1].at_ms - true_stop_ms) <= 300
    turn = detector.turn_audio()
    assert turn.size == (events[1].at_ms - events[0].at_ms + config.prefix_padding_ms) * SAMPLE_RATE // 1000



def test_silence_since_marks_a_pause_before_the_turn_ends() -> None:
    """While a pause inside speech has not yet ended the turn, `silence_since_ms` says where it began."""
    stream = vad()
    stream.feed(probs((0.9, 10), (0.0, 2)))
    assert stream.in_speech and stream.silence_since_ms == 10 * WINDOW_MS
    stream.feed(probs((0.9, 3)))  # speech again: the pause was not the end
    assert stream.silence_since_ms is None
    events = stream.feed(probs((0.0, 20)))
    assert [e.kind for e in events] == ["speech_stopped"] and events[0].at_ms == 15 * WINDOW_MS
    assert stream.silence_since_ms is None
