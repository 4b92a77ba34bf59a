"""Audio bytes -> 16 kHz mono float32 (torch-free; `modalities.audio.mel` takes it on to Whisper's log-mel).

Decoding is defensive because the bytes come from clients: the encoded size is capped, the header
(`soundfile.info`) is checked before any sample is read, and samples are then read in fixed-size
blocks with a hard cap on the decoded length. Headers can lie both ways — streaming writers
(espeak-ng, sox, ffmpeg to a pipe) put a ~2 GiB placeholder in the WAV data size, and libsndfile then
trusts the bytes actually present — so the header is only used to reject early; the block loop is
what guarantees memory stays bounded by `max_duration_s`, whatever the header says.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import soundfile as sf
import soxr
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modalities.errors import MediaError

SAMPLE_RATE = 16_000  # Whisper's input rate
HOP_LENGTH = 160  # samples per mel frame (10 ms)
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
SAMPLES_PER_FRAME = 2 * HOP_LENGTH  # encoder conv2 has stride 2: one feature frame per 320 samples (50 per second)
WINDOW_SECONDS = 30  # Whisper's fixed input window
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # 480_000
WINDOW_MEL_FRAMES = WINDOW_SECONDS * MEL_FRAMES_PER_SECOND  # 3000

# Container formats accepted, as `soundfile.info(...).format` names them (MP3 needs libsndfile>=1.1).
ALLOWED_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "MP3"})
# Frames read per block: bounds the transient allocation to BLOCK_FRAMES x channels x 4 bytes.
BLOCK_FRAMES = 65_536
# libsndfile reports this frame count when a stream's length is unknown.
SF_COUNT_MAX = 2**63 - 1
# WAV data sizes that streaming writers use for "length unknown" (they cannot seek back to patch
# the header): 0, 0xFFFFFFFF, and libsndfile/espeak-ng/sox's 0x7FFFF000-ish. A declared size at or
# above this threshold is treated as unknown rather than as a truncated file.
WAV_STREAMING_SIZE_THRESHOLD = 0x7FFF0000

MiB = 1024 * 1024


class AudioLimits(BaseModel):
    """What a client may send as audio. Decoded memory is bounded by `max_duration_s`
    (16 kHz mono float32: 600 s -> 38 MB), transient memory by `BLOCK_FRAMES x max_channels`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_duration_s: float = Field(
        600.0,
        gt=0,
        description="Longest accepted audio, seconds. 10 min covers voice notes and calls; it bounds "
        "decoded memory (38 MB at 16 kHz float32) and transcription time (~20 Whisper windows).",
    )
    max_input_bytes: int = Field(
        25 * MiB, gt=0, description="Largest accepted encoded payload, bytes (OpenAI's audio upload limit is 25 MB)."
    )
    max_channels: int = Field(8, ge=1, description="Most channels accepted (7.1 surround = 8); more is treated as corrupt.")
    min_sample_rate: int = Field(4_000, gt=0, description="Lowest accepted source sample rate, Hz.")
    max_sample_rate: int = Field(384_000, gt=0, description="Highest accepted source sample rate, Hz.")

    @model_validator(mode="after")
    def _rates_ordered(self) -> AudioLimits:
        if self.min_sample_rate > self.max_sample_rate:
            raise ValueError("min_sample_rate must not exceed max_sample_rate")
        return self


DEFAULT_LIMITS = AudioLimits()


def _wav_truncated(data: bytes) -> bool:
    """True if a RIFF/WAVE file declares a data chunk longer than the bytes present.

    libsndfile silently decodes what is there, so a cut-off upload would otherwise pass as a
    shorter clip. Streaming placeholders (see WAV_STREAMING_SIZE_THRESHOLD) are not truncation.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return False
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"data":
            if size == 0 or size >= WAV_STREAMING_SIZE_THRESHOLD:
                return False
            return body + size > len(data)
        pos = body + size + (size & 1)  # chunks are word-aligned
    return True  # no data chunk within the bytes present


def decode_audio(data: bytes, limits: AudioLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode wav/flac/ogg/mp3 bytes to mono float32 at SAMPLE_RATE, shape [n_samples].

    Raises `MediaError` (param "audio") for empty, oversized, undecodable, truncated, non-finite,
    too-long or implausible (channels, sample rate) input. Multi-channel audio is averaged to mono.
    """
    if not data:
        raise MediaError("audio is empty", param="audio", code="empty_audio")
    if len(data) > limits.max_input_bytes:
        raise MediaError(
            f"audio payload is {len(data)} bytes, over the {limits.max_input_bytes}-byte limit",
            param="audio",
            code="audio_too_large",
        )
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:  # libsndfile raises several types for garbage; all mean "not audio"
        raise MediaError("could not decode audio (unsupported format or corrupt data)", param="audio") from e
    if info.format not in ALLOWED_FORMATS:
        raise MediaError(
            f"unsupported audio format {info.format}; send wav, flac, ogg or mp3", param="audio", code="unsupported_format"
        )
    if not 1 <= info.channels <= limits.max_channels:
        raise MediaError(f"audio has {info.channels} channels (1..{limits.max_channels} accepted)", param="audio")
    if not limits.min_sample_rate <= info.samplerate <= limits.max_sample_rate:
        raise MediaError(
            f"audio sample rate {info.samplerate} Hz is outside {limits.min_sample_rate}..{limits.max_sample_rate} Hz",
            param="audio",
        )
    max_source_frames = math.ceil(limits.max_duration_s * info.samplerate)
    if info.frames != SF_COUNT_MAX and info.frames > max_source_frames:
        raise _too_long(info.frames / info.samplerate, limits)
    if info.format in {"WAV", "WAVEX"} and _wav_truncated(data):
        raise MediaError("audio is truncated (WAV data chunk shorter than its header says)", param="audio")

    try:
        mono = _read_mono_capped(data, info.samplerate, max_source_frames, limits)
    except MediaError:
        raise
    except Exception as e:
        raise MediaError("could not decode audio (corrupt or truncated data)", param="audio") from e
    if mono.size == 0:
        raise MediaError("audio has no samples", param="audio", code="empty_audio")
    return mono


def _too_long(seconds: float, limits: AudioLimits) -> MediaError:
    return MediaError(
        f"audio is {seconds:.1f} s long, over the {limits.max_duration_s:g} s limit", param="audio", code="audio_too_long"
    )


def _read_mono_capped(data: bytes, source_rate: int, max_source_frames: int, limits: AudioLimits) -> np.ndarray:
    """Block-wise read + downmix + resample; never holds more than the cap plus one block."""
    resampler = None if source_rate == SAMPLE_RATE else soxr.ResampleStream(source_rate, SAMPLE_RATE, 1, dtype="float32")
    pieces: list[np.ndarray] = []
    frames_read = 0
    with sf.SoundFile(io.BytesIO(data)) as f:
        for block in f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
            frames_read += block.shape[0]
            if frames_read > max_source_frames:
                raise _too_long(frames_read / source_rate, limits)
            if not np.isfinite(block).all():
                raise MediaError("audio contains NaN or infinite samples", param="audio")
            # Float WAVs carry the client's raw floats: full scale is +-1, and a huge finite sample
            # (1e38) would overflow the channel mean and the resampler to inf/NaN. Clip as playback does.
            np.clip(block, -1.0, 1.0, out=block)
            mono = block.mean(axis=1, dtype=np.float32)
            pieces.append(mono if resampler is None else resampler.resample_chunk(mono))
    if resampler is not None:
        pieces.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    audio = np.concatenate(pieces).astype(np.float32, copy=False)
    # The resampler rings past full scale on clipped, square-ish input (a mutated MP3 reached 2.03):
    # back to the playback range Whisper's features assume.
    return np.clip(audio, -1.0, 1.0, out=audio)


def resample(audio: np.ndarray, source_rate: int) -> np.ndarray:
    """Resample mono float32 [n] from `source_rate` to SAMPLE_RATE with soxr (HQ)."""
    if source_rate == SAMPLE_RATE:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio.astype(np.float32, copy=False), source_rate, SAMPLE_RATE).astype(np.float32, copy=False)


def feature_frames(num_samples: int) -> int:
    """Encoder feature frames covering `num_samples` at 16 kHz: ceil(n / 320)."""
    return math.ceil(num_samples / SAMPLES_PER_FRAME)
