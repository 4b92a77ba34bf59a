"""Drawing primitives for `chorus explain`'s picture (serve/cli/explain_render.py): fonts, the relevance
colormap, wrapped and tinted text, rows of word boxes, waveforms, and the request's media decoded from its
base64 data. Pillow, numpy and soundfile only; nothing here talks to the service."""

from __future__ import annotations

import base64
import binascii
import functools
import io
import math
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

FONT_DIR = "/usr/share/fonts/truetype/dejavu"  # the Makefile's apt step installs fonts-dejavu-core
FONT_FILES = {False: f"{FONT_DIR}/DejaVuSans.ttf", True: f"{FONT_DIR}/DejaVuSans-Bold.ttf"}

RGB = tuple[int, int, int]
BLACK: RGB = (20, 20, 20)
WHITE: RGB = (255, 255, 255)
GREY: RGB = (110, 110, 110)
LIGHT: RGB = (236, 236, 236)
FRAME: RGB = (170, 170, 170)

# The relevance colormap: white (none) → light orange → orange → dark red (the most), linear between stops.
COLORMAP_STOPS: tuple[tuple[float, RGB], ...] = (
    (0.0, (255, 255, 255)),
    (0.35, (253, 208, 162)),
    (0.7, (241, 105, 19)),
    (1.0, (127, 39, 4)),
)


@functools.cache
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at `size` px, else Pillow's built-in font (no DejaVu installed)."""
    for path in (FONT_FILES[bold], FONT_FILES[False]):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def line_height(f) -> int:
    ascent, descent = f.getmetrics()
    return ascent + descent + 3


def text_width(f, text: str) -> float:
    return f.getlength(text)


# --- colours -------------------------------------------------------------------------------------------


def relevance_color(value: float) -> RGB:
    """The colormap at `value` (0..1; out-of-range and NaN values are clamped, NaN to 0)."""
    v = 0.0 if not math.isfinite(value) else min(max(value, 0.0), 1.0)
    for (lo, lo_rgb), (hi, hi_rgb) in zip(COLORMAP_STOPS, COLORMAP_STOPS[1:]):
        if v <= hi:
            t = (v - lo) / (hi - lo)
            return tuple(round(a + (b - a) * t) for a, b in zip(lo_rgb, hi_rgb))  # type: ignore[return-value]
    return COLORMAP_STOPS[-1][1]


def ink_on(background: RGB) -> RGB:
    """Black or white, whichever reads better on `background`."""
    r, g, b = background
    return BLACK if 0.299 * r + 0.587 * g + 0.114 * b > 140 else WHITE


def normalise(values: Sequence[float]) -> list[float]:
    """`values` divided by their maximum (all zeros when nothing is above zero)."""
    finite = [v if isinstance(v, int | float) and math.isfinite(v) else 0.0 for v in values]
    top = max(finite, default=0.0)
    return [max(v, 0.0) / top if top > 0 else 0.0 for v in finite]


def draw_colorbar(draw: ImageDraw.ImageDraw, x: int, y: int, top: float, width: int = 160) -> int:
    """A horizontal colormap legend at (x, y), labelled 0 … `top`; returns its height."""
    small = font(11)
    draw.text((x, y), "relevance", fill=GREY, font=small)
    bar_y = y + line_height(small)
    for i in range(width):
        draw.line([(x + i, bar_y), (x + i, bar_y + 10)], fill=relevance_color(i / (width - 1)))
    draw.rectangle([x, bar_y, x + width, bar_y + 10], outline=FRAME)
    label_y = bar_y + 12
    draw.text((x, label_y), "0", fill=GREY, font=small)
    top_label = f"{top:.3g}"
    draw.text((x + width - text_width(small, top_label), label_y), top_label, fill=GREY, font=small)
    return label_y + line_height(small) - y


# --- text ----------------------------------------------------------------------------------------------


def wrap(text: str, f, width: int) -> list[str]:
    """`text` broken into lines no wider than `width` px, at spaces (and inside words too long for a line)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(f, candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while text_width(f, word) > width and len(word) > 1:
                cut = max(1, _fitting_prefix(word, f, width))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _fitting_prefix(word: str, f, width: int) -> int:
    n = len(word)
    while n > 1 and text_width(f, word[:n]) > width:
        n -= 1
    return n


@dataclass
class Placed:
    """A piece of text laid out at (x, y) relative to its block, `w`×`h` px, on `background` (None: none)."""

    x: float
    y: float
    w: float
    h: int
    text: str
    background: RGB | None


def layout_runs(runs: Sequence[tuple[str, RGB | None]], f, width: int) -> tuple[list[Placed], int]:
    """Flowing text made of runs, each with its own background, wrapped at `width` px; and its height."""
    height = line_height(f)
    placed: list[Placed] = []
    x, y = 0.0, 0
    for text, background in runs:
        for token in re.findall(r"\n|[^\S\n]+|[^\s]+", text):
            if token == "\n":
                x, y = 0.0, y + height
                continue
            w = text_width(f, token)
            if token.isspace():
                if x > 0:  # no tint at the start of a line
                    w = min(w, width - x)
                    placed.append(Placed(x, y, w, height, token, background))
                    x += w
                continue
            for piece in wrap(token, f, width) if w > width else [token]:
                w = text_width(f, piece)
                if x > 0 and x + w > width:
                    x, y = 0.0, y + height
                placed.append(Placed(x, y, w, height, piece, background))
                x += w
    return placed, y + height


def draw_runs(draw: ImageDraw.ImageDraw, origin: tuple[int, int], placed: Sequence[Placed], f) -> None:
    ox, oy = origin
    for p in placed:
        if p.background is not None:
            draw.rectangle([ox + p.x, oy + p.y, ox + p.x + p.w, oy + p.y + p.h - 1], fill=p.background)
    for p in placed:
        if not p.text.isspace():
            draw.text((ox + p.x, oy + p.y + 1), p.text, fill=ink_on(p.background or WHITE), font=f)


CHIP_PAD, CHIP_GAP = 4, 4


def layout_chips(labels: Sequence[str], f, width: int) -> tuple[list[tuple[float, int, float, int]], int]:
    """Word boxes in a wrapping row: each label's (x, y, w, h) relative to the row, and the row's height."""
    h = line_height(f) + 2 * CHIP_PAD - 2
    boxes: list[tuple[float, int, float, int]] = []
    x, y = 0.0, 0
    for label in labels:
        w = min(text_width(f, label) + 2 * CHIP_PAD, width)
        if x > 0 and x + w > width:
            x, y = 0.0, y + h + CHIP_GAP
        boxes.append((x, y, w, h))
        x += w + CHIP_GAP
    return boxes, (y + h if labels else 0)


def draw_chips(draw, origin, labels, colors, boxes, f) -> None:
    ox, oy = origin
    for label, color, (x, y, w, h) in zip(labels, colors, boxes):
        draw.rectangle([ox + x, oy + y, ox + x + w, oy + y + h], fill=color, outline=FRAME)
        draw.text((ox + x + CHIP_PAD, oy + y + CHIP_PAD - 1), label, fill=ink_on(color), font=f)


# --- waveforms -----------------------------------------------------------------------------------------


def waveform_columns(samples: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """The minimum and maximum sample under each of `columns` pixel columns."""
    if columns <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    if samples.size == 0:
        return np.zeros(columns, np.float32), np.zeros(columns, np.float32)
    starts = np.minimum(np.linspace(0, samples.size, columns + 1).astype(np.int64)[:-1], samples.size - 1)
    return np.minimum.reduceat(samples, starts), np.maximum.reduceat(samples, starts)


def draw_waveform(draw, box: tuple[int, int, int, int], samples: np.ndarray | None, color: RGB = (49, 99, 149)) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=(250, 250, 250), outline=FRAME)
    mid, half = (y0 + y1) / 2, (y1 - y0) / 2 - 2
    draw.line([(x0, mid), (x1, mid)], fill=LIGHT)
    if samples is None or samples.size == 0:
        return
    peak = float(np.max(np.abs(samples))) or 1.0
    mins, maxs = waveform_columns(samples, x1 - x0 - 1)
    for i, (lo, hi) in enumerate(zip(mins / peak, maxs / peak)):
        draw.line([(x0 + 1 + i, mid - hi * half), (x0 + 1 + i, mid - lo * half)], fill=color)


# --- media from the request ----------------------------------------------------------------------------


def data_url_bytes(url: str) -> bytes | None:
    """The bytes of a `data:` URL (base64 or percent-encoded); None for any other URL or bad data."""
    if not url.startswith("data:") or "," not in url:
        return None
    header, payload = url[5:].split(",", 1)
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None


def decode_audio(data_b64: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate of base64 audio (wav, flac, ogg, mp3: soundfile)."""
    import soundfile

    raw = data_b64.split(",", 1)[1] if data_b64.startswith("data:") else data_b64
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(raw)), dtype="float32", always_2d=True)
    return samples.mean(axis=1), int(rate)


def decode_image(url: str) -> Image.Image | None:
    """An image part's picture, upright (EXIF) and RGB as the service sees it; None if not a readable data: URL."""
    data = data_url_bytes(url)
    if not data:
        return None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(flat, rgba).convert("RGB")
    return image.convert("RGB")
