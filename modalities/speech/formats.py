"""OpenAI's speech `response_format`s: one-shot encoding and sentence-by-sentence stream encoding.

Mono float32 in [-1, 1] (values outside are clipped) at OUTPUT_RATE in; bytes out. libsndfile
(soundfile) does every codec: it has encoders for WAV, FLAC, MP3 (LAME) and Ogg/Opus but none for AAC,
so "aac" is a known format that `encode` refuses (ENCODABLE lists what it accepts).

Streaming (`StreamEncoder`), checked against libsndfile 1.2.2 by decoding the concatenated output:
- pcm: raw PCM16, chunk by chunk.
- wav: a 44-byte header whose RIFF and data sizes are the streaming placeholder 0xFFFFFFFF ("length
  unknown"; what ffmpeg and sox write to a pipe, and what libsndfile and browsers read to the end),
  then raw PCM16 chunk by chunk.
- mp3, opus: ONE encoder kept open over the whole answer, its bytes handed out as the codec emits
  them (`_Sink`). Separate per-chunk files do not chain: libsndfile writes a Xing/Info frame with the
  frame count into each MP3, and decoders stop after the first file's count (2.0 s of audio read back
  as 1.3 s); a second Ogg/Opus stream appended after the first is ignored the same way. One stream
  is also gapless (no encoder delay and padding at every sentence). At close libsndfile seeks back to
  rewrite the MP3's first frame (the Xing/Info tag) and that rewrite is dropped, as the bytes have left:
  the stream keeps LAME's placeholder, a valid frame that decodes as 24 ms of silence. MP3 is constant
  bit rate, so any decoder can size a stream that has no tag. Bytes lag the audio by the encoders'
  buffering: a few MP3 frames, and one Ogg page for Opus (page latency set to OPUS_PAGE_LATENCY_MS).
- flac: buffered and encoded at `close()` (a FLAC stream cannot be chained or left open-ended).
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import soundfile as sf

from modalities.speech.config import OUTPUT_RATE

__all__ = ["ENCODABLE", "SPEECH_FORMATS", "StreamEncoder", "content_type", "encode"]

SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")  # OpenAI's response_format values
ENCODABLE = ("mp3", "opus", "flac", "wav", "pcm")  # libsndfile has no AAC encoder
_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Opus in an Ogg container, as OpenAI sends it
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",  # raw 16-bit little-endian mono, no header
}
# (libsndfile format, subtype, extra SoundFile options) of the codecs libsndfile encodes.
MP3_COMPRESSION_LEVEL = 0.6  # constant bit rate ~64 kbit/s at 24 kHz mono: clear speech
_SNDFILE: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mp3": ("MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT", "compression_level": MP3_COMPRESSION_LEVEL}),
    "opus": ("OGG", "OPUS", {}),  # libopus's default (~40 kbit/s here)
    "flac": ("FLAC", "PCM_16", {}),
    "wav": ("WAV", "PCM_16", {}),
}
PCM16_MAX = 32767
WAV_STREAMING_SIZE = 0xFFFFFFFF  # RIFF and data sizes of a WAV whose length is unknown when its header leaves
OPUS_PAGE_LATENCY_MS = 100.0  # libsndfile's default holds ~1 s of audio per Ogg page
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # sndfile.h; soundfile's cdef does not declare it
# No samples become this much silence in the compressed formats: for an empty clip libsndfile writes
# an MP3 or FLAC of 0 bytes and an Ogg/Opus that it cannot read back; one frame's worth opens anywhere.
EMPTY_CLIP_MS = 24


def content_type(fmt: str) -> str:
    """The Content-Type of a response in `fmt` (one of SPEECH_FORMATS)."""
    try:
        return _CONTENT_TYPES[fmt]
    except KeyError:
        raise ValueError(f"unknown speech format {fmt!r}; known: {', '.join(SPEECH_FORMATS)}") from None


def _check_encodable(fmt: str) -> None:
    if fmt not in ENCODABLE:
        raise ValueError(f"cannot encode speech as {fmt!r}; encodable formats: {', '.join(ENCODABLE)}")


def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape [n], got shape {audio.shape}")
    return np.clip(audio, -1.0, 1.0)


def _pcm16(audio: np.ndarray) -> bytes:
    return np.round(_mono(audio) * PCM16_MAX).astype("<i2").tobytes()


def encode(audio: np.ndarray, fmt: str, sample_rate: int = OUTPUT_RATE) -> bytes:
    """Mono float32 [n] -> the bytes of a complete file in `fmt` (pcm: raw PCM16 LE, 2 bytes a sample).
    An empty clip gives an empty pcm, a header-only wav, and EMPTY_CLIP_MS of silence otherwise."""
    _check_encodable(fmt)
    if fmt == "pcm":
        return _pcm16(audio)
    major, subtype, options = _SNDFILE[fmt]
    audio = _mono(audio)
    if not audio.size and fmt != "wav":
        audio = np.zeros(sample_rate * EMPTY_CLIP_MS // 1000, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format=major, subtype=subtype, **options)
    return buf.getvalue()


def wav_stream_header(sample_rate: int = OUTPUT_RATE) -> bytes:
    """A 44-byte PCM16 mono WAV header with placeholder (unknown) lengths; raw PCM16 follows it."""
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, sample_rate, 2 * sample_rate, 2, 16)  # PCM, mono, 16-bit
    return (
        b"RIFF" + struct.pack("<I", WAV_STREAMING_SIZE) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
        + b"data" + struct.pack("<I", WAV_STREAMING_SIZE)
    )  # fmt: skip


class _Sink:
    """A write-only file for libsndfile's virtual I/O that hands out bytes as they are written.

    Bytes before `sent` have already left; writes there (libsndfile's rewrite of a header at close)
    are dropped. Writes past the end are appended, with zeros over any gap a seek left.
    """

    def __init__(self) -> None:
        self._sent = 0
        self._pending = bytearray()
        self._pos = 0
        self._end = 0

    def write(self, data: Any) -> int:
        data = bytes(data)
        written = len(data)
        start, self._pos = self._pos, self._pos + written
        self._end = max(self._end, self._pos)
        if start < self._sent:  # already sent: drop that part
            data, start = data[self._sent - start :], self._sent
        if data:
            offset = start - self._sent
            if offset > len(self._pending):
                self._pending.extend(bytes(offset - len(self._pending)))
            self._pending[offset : offset + len(data)] = data
        return written

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        raise io.UnsupportedOperation("the speech stream sink is write-only")

    def take(self) -> bytes:
        """The bytes written since the last take."""
        out = bytes(self._pending)
        self._sent += len(out)
        self._pending.clear()
        return out


def _set_ogg_page_latency(file: sf.SoundFile, ms: float) -> None:
    """Shorter Ogg pages, so each sentence's Opus leaves with it rather than up to a second later.
    soundfile has no wrapper for this command; without its internals the default latency stays."""
    ffi, lib = getattr(sf, "_ffi", None), getattr(sf, "_snd", None)
    handle = getattr(file, "_file", None)
    if ffi is None or lib is None or handle is None:
        return
    value = ffi.new("double*", ms)
    lib.sf_command(handle, _SFC_SET_OGG_PAGE_LATENCY_MS, value, ffi.sizeof("double"))


class StreamEncoder:
    """Encodes an answer chunk by chunk (sentence by sentence) as one stream of `fmt`.

    `feed(chunk)` returns the bytes ready to send now (possibly b""), `close()` the rest. The
    concatenation of every returned byte string is one playable stream (see the module docstring for
    how each format streams). Not thread-safe: one encoder per response.
    """

    def __init__(self, fmt: str, sample_rate: int = OUTPUT_RATE) -> None:
        _check_encodable(fmt)
        self.fmt = fmt
        self.sample_rate = sample_rate
        self._closed = False
        self._started = False
        self._buffered: list[np.ndarray] = []  # flac
        self._sink: _Sink | None = None
        self._file: sf.SoundFile | None = None
        if fmt in ("mp3", "opus"):
            major, subtype, options = _SNDFILE[fmt]
            self._sink = _Sink()
            self._file = sf.SoundFile(self._sink, "w", sample_rate, 1, subtype, format=major, **options)
            if fmt == "opus":
                _set_ogg_page_latency(self._file, OPUS_PAGE_LATENCY_MS)

    def feed(self, chunk: np.ndarray) -> bytes:
        """Mono float32 [n] -> bytes to send now."""
        if self._closed:
            raise ValueError("StreamEncoder is closed")
        chunk = _mono(chunk)
        if self.fmt in ("pcm", "wav"):
            head = b"" if self._started or self.fmt == "pcm" else wav_stream_header(self.sample_rate)
            self._started = True
            return head + _pcm16(chunk)
        if self.fmt == "flac":
            self._buffered.append(chunk)
            return b""
        assert self._file is not None and self._sink is not None
        if chunk.size:
            self._file.write(chunk)
            self._started = True
        return self._sink.take()

    def close(self) -> bytes:
        """Finish the stream: the bytes still to send (b"" once closed)."""
        if self._closed:
            return b""
        self._closed = True
        if self.fmt == "wav" and not self._started:
            return wav_stream_header(self.sample_rate)  # an empty but well-formed stream
        if self.fmt == "flac":
            audio = np.concatenate(self._buffered) if self._buffered else np.zeros(0, np.float32)
            self._buffered = []
            return encode(audio, "flac", self.sample_rate)
        if self._file is not None and self._sink is not None:
            if not self._started:
                self._file.write(np.zeros(self.sample_rate * EMPTY_CLIP_MS // 1000, dtype=np.float32))
            self._file.close()
            return self._sink.take()
        return b""
