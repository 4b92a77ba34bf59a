"""Decode client image bytes into an RGB PIL image, safely.

Only PNG, JPEG, WEBP and GIF are decoded (the set OpenAI's vision API accepts). Pillow is told to try
only those plugins, so bytes in any other format (EPS above all, whose plugin shells out to
Ghostscript; also TIFF, PDF, BMP, ...) never reach another decoder. Animated GIF/WEBP/APNG give their
first frame.

Size is checked from the header before any pixel is decoded: `Image.open` is lazy and reads only
the header, so `.size` is known while memory use is still a few kilobytes. An image over the pixel
limit (a decompression bomb above all: a small file declaring a huge canvas) is rejected there. The
check is explicit rather than via Pillow's global `MAX_IMAGE_PIXELS` / `warnings.catch_warnings`,
both process-wide state that is not thread-safe to change per call.

Every failure the client caused becomes a `MediaError` with a short message that never echoes the
input bytes.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from modalities.errors import MediaError

# Pillow format names, as `Image.open(formats=...)` wants them.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF")

# Modern phone cameras save 48-50 MP photos in their full-resolution mode; rejecting a customer's
# unedited photo is worse than the ~150 MB an RGB decode of that size briefly takes.
DEFAULT_MAX_PIXELS = 50_000_000
# OpenAI's per-image limit; the ingress bounds the whole request, this bounds one image.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

# Transparent pixels carry undefined colour (often black); composite onto white, as a viewer shows them.
ALPHA_BACKGROUND = (255, 255, 255)

# Leading bytes of formats clients commonly send but we refuse, only to make the error say which
# format it was (decoding never goes near them).
_REFUSED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "PostScript/EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"BM", "BMP"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
)

# What Pillow raises for undecodable or truncated data (`UnidentifiedImageError` is an OSError;
# some plugins raise SyntaxError or struct/zlib errors on malformed headers or streams).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


class ImageLimits(BaseModel):
    """Bounds on one client image, checked before its pixels are decoded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(DEFAULT_MAX_BYTES, gt=0, description="Largest encoded image accepted, in bytes.")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        gt=0,
        description=(
            "Largest width*height accepted, read from the header before decoding (bounds decode memory). "
            "Pillow's own bomb check caps it at ~179 MP whatever this says."
        ),
    )


def _allowed_list() -> str:
    return ", ".join(ALLOWED_FORMATS)


def _refused_format(data: bytes) -> str | None:
    for offset, signature, name in _REFUSED_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return name
    return None


def decode_image(data: bytes, limits: ImageLimits | None = None, *, param: str | None = None) -> Image.Image:
    """Decode encoded image bytes into a fully loaded RGB image (`size` = (width, height)).

    Raises `MediaError` for empty, oversized, truncated, corrupt or disallowed-format input.
    `param` is passed through to the error (the request field the bytes came from).
    """
    limits = limits or ImageLimits()
    if not data:
        raise MediaError("empty image", param=param)
    if len(data) > limits.max_bytes:
        raise MediaError(
            f"image is {len(data)} bytes; the limit is {limits.max_bytes}", param=param, code="image_too_large"
        )
    refused = _refused_format(data)
    if refused is not None:
        raise MediaError(
            f"{refused} images are not supported; send one of {_allowed_list()}",
            param=param,
            code="unsupported_image_format",
        )

    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        # Pillow's own (global, 2x its warning threshold) bomb check fired while reading the header.
        raise MediaError(
            "image declares too many pixels (decompression bomb)", param=param, code="image_too_large"
        ) from e
    except _DECODE_ERRORS as e:
        raise MediaError(
            f"not a decodable image; send one of {_allowed_list()}", param=param, code="unsupported_image_format"
        ) from e

    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise MediaError("image has an empty canvas", param=param)
        # Checked before `load()`: nothing but the header has been read yet.
        if width * height > limits.max_pixels:
            raise MediaError(
                f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}",
                param=param,
                code="image_too_large",
            )
        try:
            image.load()  # the first frame only, for animated formats
        except _DECODE_ERRORS as e:
            raise MediaError("image data is truncated or corrupt", param=param) from e
        return _to_rgb(_upright(image))


def _upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says (phone photos are stored sideways, tagged)."""
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS:
        # A malformed orientation tag should not cost the client an otherwise good photo.
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`, alpha composited onto `ALPHA_BACKGROUND`."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
