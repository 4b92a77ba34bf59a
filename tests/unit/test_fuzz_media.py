"""Property tests of the media decoders on hostile bytes (hypothesis).

Whatever the client sends, `decode_audio` / `decode_image` either return sane output (finite
float32 mono 16 kHz audio within the duration cap; a loaded RGB image within the pixel cap) or
raise `MediaError`. Any other exception is a bug. Inputs: random bytes (with and without a format's
magic number), valid WAV/FLAC/OGG/MP3 and PNG/JPEG/GIF/WEBP built from small random arrays and then
truncated, bit-flipped or overwritten, and headers whose numbers lie (sample rate, channels, bit
depth, data size; image dimensions).

Reproducible: `derandomize=True` and no example database, so CI sees the same examples each run.
Each test sets its own `max_examples` and a per-example `deadline`; a watchdog ends the process if a
decoder hangs inside C code (where a deadline never gets control back).
"""

from __future__ import annotations

import faulthandler
import io
import struct
import zlib
from datetime import timedelta

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from modalities.audio.decode import SAMPLE_RATE, AudioLimits, decode_audio
from modalities.errors import MediaError
from modalities.vision.decode import ImageLimits, decode_image
from tests.helpers.media import encoded
from tests.helpers.memory import peak_bytes

# Small caps so that a lying header is caught by the limits quickly and memory stays bounded.
AUDIO_LIMITS = AudioLimits(max_duration_s=20.0, max_input_bytes=1 << 20)
IMAGE_LIMITS = ImageLimits(max_pixels=1_000_000, max_bytes=1 << 20)
# 20 s of 16 kHz float32 is 1.3 MB; one block of 8 channels is 2 MB; plus the resampler's buffers.
AUDIO_PEAK_BYTES = 16_000_000
# Allowed output amplitude: samples are clipped to [-1, 1] (float WAVs carry any float), and again
# after resampling, whose filter rings past full scale on such input (2.03 seen on a mutated MP3).
AUDIO_MAX_ABS = 1.0
HANG_WATCHDOG_S = 300  # a hang in C code kills the run with every thread's traceback

# Lying image headers trip Pillow's own warning threshold before our limit refuses them.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def fuzz_settings(max_examples: int, deadline_ms: int = 3000) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=timedelta(milliseconds=deadline_ms),
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


@pytest.fixture(autouse=True)
def _hang_watchdog():
    faulthandler.dump_traceback_later(HANG_WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------------------------------------
# checks


def check_audio(data: bytes) -> None:
    """decode_audio either gives sane audio or raises MediaError; peak traced memory is bounded."""
    result: list[np.ndarray] = []

    def run() -> None:
        try:
            result.append(decode_audio(data, AUDIO_LIMITS))
            event("decoded")
        except MediaError as err:
            event(f"MediaError {err.code}")
            assert err.message and "\\x" not in err.message  # short, never echoes the bytes
            assert err.param == "audio"

    peak = peak_bytes(run)
    assert peak < AUDIO_PEAK_BYTES, f"decode_audio peaked at {peak} bytes"
    if result:
        audio = result[0]
        assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1
        assert 0 < audio.size <= (AUDIO_LIMITS.max_duration_s + 1) * SAMPLE_RATE  # cap + resampler tail
        assert np.isfinite(audio).all()
        assert float(np.abs(audio).max()) <= AUDIO_MAX_ABS


def check_image(data: bytes) -> None:
    try:
        image = decode_image(data, IMAGE_LIMITS, param="image")
    except MediaError as err:
        event(f"MediaError {err.code}")
        assert err.message and "\\x" not in err.message
        assert err.param == "image"
        return
    event("decoded")
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    width, height = image.size
    assert width >= 1 and height >= 1 and width * height <= IMAGE_LIMITS.max_pixels
    assert image.tobytes()  # fully loaded: reading the pixels raises nothing


# ---------------------------------------------------------------------------------------------
# mutations of valid files


@st.composite
def mutated(draw, data: bytes, header_bytes: int = 64) -> bytes:
    """`data` truncated, bit-flipped, overwritten, with bytes deleted or inserted (1-4 edits,
    biased towards the header, where the numbers that size allocations live)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        op = draw(st.sampled_from(["truncate", "flip", "set", "delete", "insert"]))
        in_header = draw(st.booleans())
        limit = min(len(out), header_bytes) if in_header else len(out)
        pos = draw(st.integers(0, max(limit - 1, 0)))
        if op == "truncate":
            del out[pos:]
        elif op == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01])) if draw(st.booleans()) else draw(
                st.integers(0, 255)
            )
        elif op == "delete":
            del out[pos : pos + draw(st.integers(1, 16))]
        else:
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# audio

AUDIO_MAGIC = [b"", b"RIFF", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3\x03", b"\xff\xfb", b"FORM"]

AUDIO_KINDS = {  # soundfile format, subtype
    "wav16": ("WAV", "PCM_16"),
    "wav8": ("WAV", "PCM_U8"),
    "wav24": ("WAV", "PCM_24"),
    "wavfloat": ("WAV", "FLOAT"),
    "wavex": ("WAVEX", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


@st.composite
def small_audio(draw, min_seconds: float = 0.0, kinds: tuple[str, ...] = tuple(sorted(AUDIO_KINDS))) -> bytes:
    """A valid audio file: a short random signal (noise, tone or silence), 1-3 channels, up to 0.25 s
    (a single frame at 44.1 kHz resamples to no 16 kHz sample at all: `min_seconds` avoids that)."""
    kind = draw(st.sampled_from(kinds))
    fmt, subtype = AUDIO_KINDS[kind]
    rates = [8_000, 16_000, 22_050, 44_100, 48_000] if kind not in ("mp3",) else [16_000, 22_050, 44_100]
    rate = draw(st.sampled_from(rates))
    channels = draw(st.integers(1, 3 if kind not in ("mp3",) else 2))
    frames = draw(st.integers(max(1, int(min_seconds * rate)), rate // 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from(["noise", "tone", "silence", "full-scale"]))
    if shape == "noise":
        signal = rng.uniform(-1, 1, (frames, channels))
    elif shape == "tone":
        t = np.arange(frames)[:, None] / rate
        signal = 0.5 * np.sin(2 * np.pi * rng.uniform(50, 4000) * t + rng.uniform(0, 6, channels))
    elif shape == "silence":
        signal = np.zeros((frames, channels))
    else:
        signal = np.sign(rng.uniform(-1, 1, (frames, channels)))
    buf = io.BytesIO()
    sf.write(buf, signal.astype(np.float32), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@fuzz_settings(max_examples=200)
@given(magic=st.sampled_from(AUDIO_MAGIC), tail=st.binary(max_size=4096))
def test_audio_random_bytes(magic: bytes, tail: bytes) -> None:
    check_audio(magic + tail)


@fuzz_settings(max_examples=400)
@given(data=small_audio().flatmap(lambda data: mutated(data)))
def test_audio_valid_file_mutated(data: bytes) -> None:
    check_audio(data)


@fuzz_settings(max_examples=60)
@given(data=small_audio(min_seconds=0.01))
def test_audio_valid_file_decodes(data: bytes) -> None:
    """Unmutated files built from random arrays decode (the happy path the fuzzing mutates)."""
    audio = decode_audio(data, AUDIO_LIMITS)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 0 and np.isfinite(audio).all()
    assert float(np.abs(audio).max()) <= AUDIO_MAX_ABS


U32 = st.integers(0, 2**32 - 1)
WAV_FORMAT_TAGS = [1, 3, 6, 7, 0x11, 0xFFFE, 0]
WAV_PLACEHOLDERS = [0, 0x7FFF0000, 0x7FFFF000, 0xFFFFFFFF]


def wav_header(*, channels: int, rate: int, bits: int, data_size: int, fmt_tag: int) -> bytes:
    """A 44-byte PCM WAV header; every field may lie, and the derived ones wrap as 32-bit fields do."""
    block = (channels * bits // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    riff_size = min(4 + 8 + len(fmt) + 8 + data_size, 0xFFFFFFFF)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_size)


@st.composite
def forged_wav(draw) -> bytes:
    """A canonical WAV header whose numbers are each plausible or a lie, then some body bytes."""
    body = draw(st.one_of(st.binary(max_size=2048), st.integers(0, 40_000).map(lambda n: b"\x00\x01" * n)))
    channels = draw(st.one_of(st.integers(1, 8), st.integers(0, 10), st.integers(0, 0xFFFF)))
    rate = draw(st.one_of(
        st.sampled_from([8_000, 16_000, 44_100]), st.integers(4_000, 384_000),
        st.sampled_from([0, 1, 3_999, 384_001, 2**31, 2**32 - 1]), U32,
    ))
    bits = draw(st.one_of(st.sampled_from([8, 16, 24, 32]), st.sampled_from([0, 1, 12, 64]), st.integers(0, 0xFFFF)))
    fmt_tag = draw(st.one_of(st.sampled_from([1, 1, 3, 0xFFFE]), st.sampled_from(WAV_FORMAT_TAGS), st.integers(0, 0xFFFF)))
    data_size = draw(st.one_of(
        st.just(len(body)), st.integers(0, 2 * len(body) + 64), st.sampled_from(WAV_PLACEHOLDERS), U32,
    ))
    return wav_header(channels=channels, rate=rate, bits=bits, data_size=data_size, fmt_tag=fmt_tag) + body


@fuzz_settings(max_examples=300)
@given(data=forged_wav())
def test_wav_forged_header(data: bytes) -> None:
    check_audio(data)


# Found by this test: a float WAV holding huge finite samples (3e38) decoded to inf/NaN (the channel
# mean and the resampler overflow float32) and plain out-of-range floats (5.08) came out unbounded;
# decode_audio now clips samples to [-1, 1] as playback does.
@example(body=struct.pack("<2f", 3e38, 3e38) * 64, channels=2, rate=8_000).via("discovered failure")
@example(body=struct.pack("<2f", 3e38, 3e38) * 64, channels=2, rate=16_000).via("discovered failure")
@example(body=struct.pack("<f", 5.08) * 64, channels=1, rate=16_000).via("discovered failure")
@fuzz_settings(max_examples=100)
@given(
    body=st.binary(min_size=8, max_size=4096).map(lambda b: b[: len(b) // 8 * 8]),
    channels=st.integers(1, 2),
    rate=st.sampled_from([8_000, 16_000, 44_100]),
)
def test_float_wav_arbitrary_samples(body: bytes, channels: int, rate: int) -> None:
    """IEEE-float WAV samples are raw client floats: NaN, inf and 1e38 must not reach the output."""
    header = wav_header(channels=channels, rate=rate, bits=32, data_size=len(body), fmt_tag=3)
    check_audio(header + body)


def keep_or(strategy):
    """None (keep the file's true value) or a drawn lie."""
    return st.one_of(st.none(), strategy)


@fuzz_settings(max_examples=200)
@given(
    audio=small_audio(kinds=("flac",)),
    rate=keep_or(st.one_of(st.integers(0, 2**20 - 1), st.sampled_from([0, 1, 3_999, 4_000, 384_000, 655_350]))),
    channels_minus_1=keep_or(st.integers(0, 7)),
    bits_minus_1=keep_or(st.integers(0, 31)),
    total=keep_or(st.one_of(st.integers(0, 2**36 - 1), st.sampled_from([0, 1, 2**36 - 1]))),
    block=keep_or(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))),
)
def test_flac_forged_streaminfo(audio, rate, channels_minus_1, bits_minus_1, total, block) -> None:
    """FLAC STREAMINFO rewritten: sample rate, channels, bits per sample, total samples, block sizes."""
    assert audio[:4] == b"fLaC"
    data = bytearray(audio)
    start = 8  # "fLaC" + the 4-byte metadata block header; STREAMINFO is always the first block
    if block is not None:
        data[start : start + 4] = struct.pack(">HH", *block)
    # bytes 10..17 of STREAMINFO: rate (20 bits), channels-1 (3), bits-1 (5), total samples (36)
    (packed,) = struct.unpack(">Q", data[start + 10 : start + 18])
    fields = [(rate, 44, 20), (channels_minus_1, 41, 3), (bits_minus_1, 36, 5), (total, 0, 36)]
    for value, shift, width in fields:
        if value is not None:
            packed = (packed & ~(((1 << width) - 1) << shift)) | (value << shift)
    data[start + 10 : start + 18] = struct.pack(">Q", packed)
    check_audio(bytes(data))


# ---------------------------------------------------------------------------------------------
# images

IMAGE_MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"RIFF\x00\x00\x00\x00WEBPVP8 "]
IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "WEBP"]


@st.composite
def small_image(draw, formats=tuple(IMAGE_FORMATS)) -> bytes:
    fmt = draw(st.sampled_from(formats))
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    modes = {"PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"], "JPEG": ["RGB", "L", "CMYK"],
             "GIF": ["P", "L", "RGB"], "WEBP": ["RGB", "RGBA"]}[fmt]
    mode = draw(st.sampled_from(modes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert("RGB" if mode in ("P", "1", "I;16") else mode)
    if mode in ("P", "1", "I;16"):
        image = image.convert(mode)
    options = {}
    if fmt == "JPEG":
        options = {"quality": draw(st.integers(5, 95)), "progressive": draw(st.booleans())}
    elif fmt == "WEBP":
        options = {"lossless": draw(st.booleans())}
    elif fmt == "GIF" and draw(st.booleans()):  # animated, two frames
        options = {"save_all": True, "append_images": [image.transpose(Image.Transpose.ROTATE_180)]}
    elif fmt == "PNG" and draw(st.booleans()):
        options = {"optimize": True}
    return encoded(image, fmt, **options)


@fuzz_settings(max_examples=200)
@given(magic=st.sampled_from(IMAGE_MAGIC), tail=st.binary(max_size=4096))
def test_image_random_bytes(magic: bytes, tail: bytes) -> None:
    check_image(magic + tail)


@fuzz_settings(max_examples=400)
@given(data=small_image().flatmap(lambda data: mutated(data)))
def test_image_valid_file_mutated(data: bytes) -> None:
    check_image(data)


@fuzz_settings(max_examples=60)
@given(data=small_image())
def test_image_valid_file_decodes(data: bytes) -> None:
    image = decode_image(data, IMAGE_LIMITS)
    assert image.mode == "RGB" and 1 <= image.size[0] <= 24 and 1 <= image.size[1] <= 24


U16 = st.integers(0, 0xFFFF)
DIMENSION = st.one_of(st.sampled_from([0, 1, 999, 1000, 1001, 65535]), U16)


def _png_with_ihdr(data: bytes, width: int, height: int, depth: int, colour: int, fix_crc: bool) -> bytes:
    out = bytearray(data)
    out[16:26] = struct.pack(">IIBB", width, height, depth, colour)
    if fix_crc:
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    return bytes(out)


@fuzz_settings(max_examples=200)
@given(
    data=small_image(formats=("PNG",)),
    width=st.one_of(DIMENSION, U32),
    height=st.one_of(DIMENSION, U32),
    depth=st.sampled_from([0, 1, 2, 4, 8, 16, 3, 255]),
    colour=st.sampled_from([0, 2, 3, 4, 6, 1, 7, 255]),
    fix_crc=st.booleans(),
)
def test_png_forged_ihdr(data, width, height, depth, colour, fix_crc) -> None:
    check_image(_png_with_ihdr(data, width, height, depth, colour, fix_crc))


@fuzz_settings(max_examples=100)
@given(
    data=small_image(formats=("JPEG",)),
    width=DIMENSION,
    height=DIMENSION,
    precision=keep_or(st.sampled_from([0, 8, 12, 16, 255])),
    components=keep_or(st.integers(0, 255)),
)
def test_jpeg_forged_frame_header(data, width, height, precision, components) -> None:
    """The SOF frame header's precision, height, width and component count rewritten."""
    out = bytearray(data)
    sof = next((i for i in range(2, len(out) - 9) if out[i] == 0xFF and out[i + 1] in (0xC0, 0xC1, 0xC2)), None)
    assert sof is not None
    out[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    if precision is not None:
        out[sof + 4] = precision
    if components is not None:
        out[sof + 9] = components
    check_image(bytes(out))


@fuzz_settings(max_examples=100)
@given(
    data=small_image(formats=("GIF",)),
    screen=st.tuples(DIMENSION, DIMENSION),
    frame=st.tuples(DIMENSION, DIMENSION, DIMENSION, DIMENSION),
)
def test_gif_forged_dimensions(data, screen, frame) -> None:
    """Logical screen size (bytes 6..9) and the first image descriptor's position and size."""
    out = bytearray(data)
    out[6:10] = struct.pack("<HH", *screen)
    descriptor = out.find(b"\x2c", 13)
    if descriptor > 0 and descriptor + 9 <= len(out):
        out[descriptor + 1 : descriptor + 9] = struct.pack("<HHHH", *frame)
    check_image(bytes(out))


@fuzz_settings(max_examples=100)
@given(
    data=small_image(formats=("WEBP",)),
    width=st.integers(1, 1 << 24),
    height=st.integers(1, 1 << 24),
    riff_size=st.one_of(st.none(), U32),
)
def test_webp_forged_dimensions(data, width, height, riff_size) -> None:
    """VP8 (lossy: 14-bit sizes after the key-frame start code) or VP8L (lossless: 14-bit sizes
    after the 0x2f signature) canvas size rewritten; the RIFF size may lie too."""
    out = bytearray(data)
    chunk = bytes(out[12:16])
    if chunk == b"VP8 ":
        start = out.find(b"\x9d\x01\x2a", 20)
        if start > 0:
            out[start + 3 : start + 7] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    elif chunk == b"VP8L":
        bits = int.from_bytes(out[21:25], "little")
        bits = (bits & ~0x0FFFFFFF) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
        out[21:25] = bits.to_bytes(4, "little")
    elif chunk == b"VP8X":  # 24-bit canvas size minus one
        out[24:30] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + ((height - 1) & 0xFFFFFF).to_bytes(3, "little")
    if riff_size is not None:
        out[4:8] = struct.pack("<I", riff_size)
    check_image(bytes(out))
