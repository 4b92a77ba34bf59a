"""Crafted media for hostile-input tests: valid files, truncated ones, and headers that lie."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose IHDR claims `width` x `height` (CRC fixed so the header parses)."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    # Signature (8) + chunk length (4) + b"IHDR" (4), then width and height, big-endian.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 frame header claims `width` x `height`."""
    data = bytearray(encoded(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    # Marker (2) + segment length (2) + precision (1), then height and width.
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def wav_header(*, channels: int = 1, rate: int = 8000, bits: int = 16, data_size: int, fmt_tag: int = 1) -> bytes:
    """A canonical 44-byte PCM WAV header; the numbers may lie about what follows."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    riff_size = min(4 + 8 + len(fmt) + 8 + data_size, 0xFFFFFFFF)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_size)
