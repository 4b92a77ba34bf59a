"""Speech response formats: every encodable format decodes back (libsndfile) to the same duration, pcm
is raw s16le, and stream encoders' concatenated output is one playable stream of the summed length."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from modalities.speech.config import OUTPUT_RATE
from modalities.speech.formats import ENCODABLE, SPEECH_FORMATS, StreamEncoder, content_type, encode

LOSSY_SLACK_S = 0.12  # MP3: encoder delay + padding (~0.05 s) and the streamed placeholder frame (24 ms)


def tone(seconds: float, hz: float) -> np.ndarray:
    """A spoken-level (0.3) tone with a 3 Hz envelope, like syllables, faded in and out."""
    t = np.arange(int(seconds * OUTPUT_RATE)) / OUTPUT_RATE
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms in and out, as speech starts and ends
    return (0.3 * fade * np.sin(2 * np.pi * hz * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


CHUNKS = [tone(1.3, 220), tone(0.7, 330), tone(2.1, 180)]  # three "sentences", 4.1 s


def decode(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def test_formats_and_content_types() -> None:
    assert set(ENCODABLE) == set(SPEECH_FORMATS) - {"aac"}
    assert [content_type(f) for f in ENCODABLE] == ["audio/mpeg", "audio/ogg", "audio/flac", "audio/wav", "audio/pcm"]
    with pytest.raises(ValueError, match="known: mp3"):
        content_type("ogg")


def test_libsndfile_has_no_aac_encoder() -> None:
    # why "aac" is not in ENCODABLE: neither an AAC nor an MP4/M4A container among libsndfile's formats
    names = " ".join(f"{k} {v}" for k, v in sf.available_formats().items()).upper()
    assert "AAC" not in names and "MP4" not in names and "M4A" not in names


@pytest.mark.parametrize("fmt", ["aac", "ogg", "MP3"])
def test_unencodable_formats_raise_naming_the_encodable_ones(fmt: str) -> None:
    with pytest.raises(ValueError, match="encodable formats: mp3, opus, flac, wav, pcm"):
        encode(CHUNKS[0], fmt)
    with pytest.raises(ValueError, match="encodable formats"):
        StreamEncoder(fmt)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac", "wav"])
def test_encoded_file_round_trips_to_the_same_duration(fmt: str) -> None:
    audio = np.concatenate(CHUNKS)
    decoded, rate = decode(encode(audio, fmt))
    assert rate == OUTPUT_RATE and decoded.ndim == 1
    assert decoded.size / rate == pytest.approx(audio.size / OUTPUT_RATE, abs=0.02)
    # the signal, not silence or noise; an Opus stream's last ~5 ms ring after a cut (speech ends in silence)
    assert 0.2 < np.abs(decoded[: -OUTPUT_RATE // 50]).max() < 0.4


@pytest.mark.parametrize("fmt", ["flac", "wav"])
def test_lossless_formats_keep_the_samples(fmt: str) -> None:
    decoded, _ = decode(encode(CHUNKS[0], fmt))
    assert np.abs(decoded - CHUNKS[0]).max() < 2 / 32767


def test_pcm_is_raw_s16le_two_bytes_a_sample() -> None:
    audio = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0], dtype=np.float32)
    data = encode(audio, "pcm")
    assert len(data) == 2 * audio.size
    assert struct.unpack("<7h", data) == (0, 16384, -16384, 32767, -32767, 32767, -32767)  # clipped to [-1, 1]
    assert len(encode(CHUNKS[1], "pcm")) == 2 * CHUNKS[1].size


def test_two_dimensional_audio_is_refused() -> None:
    with pytest.raises(ValueError, match="mono"):
        encode(np.zeros((2, 10), np.float32), "wav")


def stream(fmt: str, chunks: list[np.ndarray]) -> list[bytes]:
    encoder = StreamEncoder(fmt)
    return [encoder.feed(c) for c in chunks] + [encoder.close()]


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac"])
def test_stream_concatenation_decodes_to_the_sum_of_the_chunks(fmt: str) -> None:
    decoded, rate = decode(b"".join(stream(fmt, CHUNKS)))
    total = sum(c.size for c in CHUNKS) / OUTPUT_RATE
    assert rate == OUTPUT_RATE
    assert decoded.size / rate == pytest.approx(total, abs=LOSSY_SLACK_S)
    # every sentence is there: the last one (180 Hz, 2.1 s) is audible in the decoded tail
    tail = decoded[-OUTPUT_RATE:-OUTPUT_RATE // 4]
    assert 0.15 < np.abs(tail).max() < 0.4


@pytest.mark.parametrize("fmt", ["mp3", "opus"])
def test_compressed_streams_send_bytes_before_close(fmt: str) -> None:
    parts = stream(fmt, CHUNKS)
    assert all(parts[:3]), [len(p) for p in parts]  # each sentence's bytes leave with it
    assert sum(map(len, parts[:3])) > 0.7 * sum(map(len, parts))


def test_wav_stream_is_a_placeholder_header_then_pcm() -> None:
    parts = stream("wav", CHUNKS)
    header = parts[0][:44]
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert struct.unpack_from("<I", header, 4)[0] == 0xFFFFFFFF == struct.unpack_from("<I", header, 40)[0]
    assert struct.unpack_from("<HHI", header, 20) == (1, 1, OUTPUT_RATE)  # PCM, mono, 24 kHz
    assert len(parts[0]) == 44 + 2 * CHUNKS[0].size and len(parts[1]) == 2 * CHUNKS[1].size
    assert parts[-1] == b""
    decoded, _ = decode(b"".join(parts))
    assert np.abs(decoded - np.concatenate(CHUNKS)).max() < 2 / 32767  # exactly the samples, in order


def test_pcm_stream_equals_one_shot_pcm() -> None:
    assert b"".join(stream("pcm", CHUNKS)) == encode(np.concatenate(CHUNKS), "pcm")


def test_flac_stream_is_buffered_to_close() -> None:
    parts = stream("flac", CHUNKS)
    assert parts[:3] == [b"", b"", b""]
    assert decode(parts[-1])[0].size == sum(c.size for c in CHUNKS)


def test_empty_clips_and_streams_still_decode() -> None:
    empty = np.zeros(0, np.float32)
    assert encode(empty, "pcm") == b"" == StreamEncoder("pcm").close()
    assert len(encode(empty, "wav")) == 44 and len(StreamEncoder("wav").close()) == 44
    for fmt in ("mp3", "opus", "flac"):  # libsndfile alone writes 0 bytes, or an Opus it cannot read
        for data in (encode(empty, fmt), StreamEncoder(fmt).close()):
            audio, _ = decode(data)
            assert audio.size < 0.1 * OUTPUT_RATE and np.abs(audio).max(initial=0.0) < 0.01


def test_encoder_refuses_feeds_after_close() -> None:
    encoder = StreamEncoder("mp3")
    encoder.feed(CHUNKS[0])
    assert encoder.close() != b""
    assert encoder.close() == b""  # closing twice is harmless
    with pytest.raises(ValueError, match="closed"):
        encoder.feed(CHUNKS[1])


def test_the_ingress_lists_what_the_deployment_encodes() -> None:
    """The light ingress refuses formats by its own list; it must be the encoder's."""
    from modalities.speech.formats import ENCODABLE, content_type
    from serve.protocol.speech import CONTENT_TYPES, ENCODABLE_FORMATS

    assert ENCODABLE_FORMATS == ENCODABLE
    assert all(CONTENT_TYPES[fmt] == content_type(fmt) for fmt in ENCODABLE)
