"""16 kHz mono float32 -> Whisper log-mel, exactly as openai-whisper computes it."""

from __future__ import annotations

import numpy as np
import torch
import whisper.audio

from modalities.audio.decode import HOP_LENGTH, SAMPLE_RATE, WINDOW_MEL_FRAMES, WINDOW_SAMPLES, WINDOW_SECONDS

# `decode` names Whisper's framing without importing whisper (and torch); it must be whisper's.
assert (SAMPLE_RATE, HOP_LENGTH, WINDOW_SAMPLES, WINDOW_MEL_FRAMES) == (
    whisper.audio.SAMPLE_RATE,
    whisper.audio.HOP_LENGTH,
    whisper.audio.N_SAMPLES,
    whisper.audio.N_FRAMES,
), "openai-whisper's audio constants changed"


def log_mel(audio: np.ndarray | torch.Tensor, n_mels: int, n_frames: int = WINDOW_MEL_FRAMES) -> torch.Tensor:
    """Whisper log-mel of one mono 16 kHz clip, [n_mels, n_frames] (n_frames <= 3000).

    Computed on the clip followed by a window of zeros, exactly as whisper does, then cut to
    `n_frames`: frames past the clip are the same "silence" whisper's padded window would hold.
    Normalisation uses the clip's own maximum, so a clip's mel never depends on its batch-mates.
    """
    if not 0 < n_frames <= WINDOW_MEL_FRAMES:
        raise ValueError(f"n_frames must be in 1..{WINDOW_MEL_FRAMES}, got {n_frames}")
    audio = torch.as_tensor(audio, dtype=torch.float32)
    if audio.shape[0] > WINDOW_SAMPLES:
        raise ValueError(f"log_mel takes at most one {WINDOW_SECONDS}-s window; got {audio.shape[0]} samples")
    mel = whisper.audio.log_mel_spectrogram(audio, n_mels=n_mels, padding=WINDOW_SAMPLES)
    return mel[:, :n_frames]
