"""Text in images: RapidOCR (PP-OCRv4 detection + direction classifier + recognition, ONNX Runtime).

The models ship inside the `rapidocr-onnxruntime` wheel, so OCR works on a machine with no model
hub. `OcrRuntime.read(data)` decodes client bytes with the same safe decoder as CLIP
(`modalities.vision.decode`), runs the three models and returns the lines in reading order, each
with its box (four corners in the image's pixels) and its recognition confidence.

Reading order: lines are grouped into rows by their vertical centres (two boxes whose centres are
within half a line height of each other share a row, which absorbs the slant of a rotated or
perspective-skewed photo), rows top to bottom, boxes in a row left to right. A photo turned by more
than ~45° reads wrong by that rule; the detector and the direction classifier still read its lines.

PP-OCR's recogniser drops many spaces between words (its dictionary is Chinese + English); the
spaces are put back from the recogniser's own character positions (`return_word_box`): a gap
between two characters wider than a share of the line's character pitch is a space.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modalities.errors import MediaError
from modalities.vision.config import OcrConfig
from modalities.vision.decode import decode_image

__all__ = ["OcrLine", "OcrResult", "OcrRuntime", "reading_order"]

Point = tuple[float, float]


@dataclass(frozen=True)
class OcrLine:
    """One line of text read from an image."""

    text: str
    box: tuple[Point, Point, Point, Point]  # corners in image pixels: top-left, top-right, bottom-right, bottom-left
    confidence: float
    row: int = 0  # the row of the page it sits in (`reading_order`): pieces of one printed line share it

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "box": [[round(x, 1), round(y, 1)] for x, y in self.box],
            "confidence": round(self.confidence, 4),
            "row": self.row,
        }


@dataclass(frozen=True)
class OcrResult:
    """What OCR read from one image, in reading order."""

    lines: tuple[OcrLine, ...]
    width: int
    height: int
    seconds: float = 0.0  # decode + OCR time of the read that produced it (0 for a cache hit's copy)
    timings: dict[str, float] = field(default_factory=dict)  # detection / classification / recognition

    @property
    def text(self) -> str:
        """The text row by row: the pieces of one row joined by a space ("TOTAL" and "$48.90" printed
        on one line stay on one), rows one per line."""
        rows: list[list[str]] = []
        last = None
        for line in self.lines:
            if line.row != last or not rows:
                rows.append([])
                last = line.row
            rows[-1].append(line.text)
        return "\n".join(" ".join(row) for row in rows)


def _centre(line: OcrLine) -> tuple[float, float]:
    return sum(x for x, _ in line.box) / 4, sum(y for _, y in line.box) / 4


def _height(line: OcrLine) -> float:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = line.box
    return max(1.0, (math.dist((x0, y0), (x3, y3)) + math.dist((x1, y1), (x2, y2))) / 2)


def _width(line: OcrLine) -> float:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = line.box
    return max(1.0, (math.dist((x0, y0), (x1, y1)) + math.dist((x3, y3), (x2, y2))) / 2)


def text_angle(lines: list[OcrLine]) -> float:
    """The page's text slant in radians: the median direction of the lines' top edges (lines at
    least twice as wide as tall, whose direction is well defined), 0 without any."""
    angles = sorted(
        math.atan2(line.box[1][1] - line.box[0][1], line.box[1][0] - line.box[0][0])
        for line in lines
        if _width(line) >= 2 * _height(line)
    )
    return angles[len(angles) // 2] if angles else 0.0


def reading_order(lines: list[OcrLine], upside_down: bool = False) -> list[OcrLine]:
    """`lines` in reading order: rows top to bottom, each row left to right, in the page's own
    frame: centres are turned by the text's slant first (`text_angle`), so the lines of a photo
    taken at an angle still fall into their rows, and by half a turn more for a page upside down.
    A row: centres within half a line height."""
    angle = text_angle(lines) + (math.pi if upside_down else 0.0)
    cos, sin = math.cos(angle), math.sin(angle)
    placed = []  # (x, y) of the centre rotated by -angle, the box height, the line
    for line in lines:
        x, y = _centre(line)
        placed.append((x * cos + y * sin, -x * sin + y * cos, _height(line), line))
    rows: list[list[tuple[float, float, float, OcrLine]]] = []
    row_y_sum = row_height = 0.0  # of the last row: the sum of its centres' y, its tallest box
    for entry in sorted(placed, key=lambda e: e[1]):
        _x, y, height, _line = entry
        if rows and abs(y - row_y_sum / len(rows[-1])) <= 0.5 * min(height, row_height):
            rows[-1].append(entry)
            row_y_sum, row_height = row_y_sum + y, max(row_height, height)
            continue
        rows.append([entry])
        row_y_sum, row_height = y, height
    return [
        dataclasses.replace(entry[3], row=number)
        for number, row in enumerate(rows)
        for entry in sorted(row, key=lambda e: e[0])
    ]


SPACE_PITCHES = 1.5
MIN_RUN = 12  # characters without a space before a run is looked at for dropped spaces


def _spaced(text: str, char_boxes: list[Any] | None) -> str:
    """`text` with the spaces the recogniser dropped in long runs put back, from its characters'
    positions.

    `char_boxes`: RapidOCR's per-character boxes for the line (from the CTC frames each character
    was read at, so consecutive boxes touch), one per character with or without the spaces it read.
    Only runs of `MIN_RUN` or more characters without a space are touched (on blurred or small
    print the recogniser runs words together: "Tracking1Z999AA1..."; on clean print it reads the
    spaces, and a wide letter inside a short word must not split it). Inside such a run, a character
    that starts more than `SPACE_PITCHES` median pitches after the one before follows skipped blank
    frames: a space; never after a decimal point or a thousands separator ("3.40", "1,234"). The
    recogniser's own spaces are kept. Where the boxes do not line up with the characters, the text
    stays as read.
    """
    if not char_boxes or len(text) < MIN_RUN:
        return text
    if len(char_boxes) == len(text):
        lefts = [min(point[0] for point in box) for box in char_boxes]
    elif len(char_boxes) == sum(c != " " for c in text):
        it = iter(min(point[0] for point in box) for box in char_boxes)
        lefts = [next(it) if c != " " else math.nan for c in text]
    else:
        return text
    steps = sorted(
        lefts[i + 1] - lefts[i] for i in range(len(text) - 1) if text[i] != " " and text[i + 1] != " "
    )
    if not steps or steps[len(steps) // 2] <= 0:
        return text
    pitch = steps[len(steps) // 2]
    out = list(text)
    runs = list(re.finditer(rf"[^ ]{{{MIN_RUN},}}", text))
    for run in reversed(runs):  # right to left: an inserted space leaves the indices before it alone
        for i in range(run.end() - 1, run.start(), -1):
            if not (text[i].isdigit() and text[i - 1] in ".,") and lefts[i] - lefts[i - 1] > SPACE_PITCHES * pitch:
                out.insert(i, " ")
    return "".join(out)


class OcrRuntime:
    """RapidOCR with the packaged PP-OCRv4 models; thread-safe (one read at a time per runtime)."""

    def __init__(self, config: OcrConfig | None = None) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.config = config or OcrConfig()
        threads = self.config.threads or 1
        params: dict[str, Any] = {
            "max_side_len": self.config.max_side,
            "text_score": self.config.min_confidence,
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
        }
        self._engine = RapidOCR(**params)
        self._lock = threading.Lock()
        # RapidOCR's result leaves out what its direction classifier did per line (turned the crop
        # half round before recognition: "180" scored over its threshold); kept here, read under the lock.
        self._directions: list[str] = []
        classify = self._engine.text_cls
        threshold = float(getattr(classify, "cls_thresh", 0.9))

        def classify_and_keep(crops: Any) -> Any:
            turned, results, elapsed = classify(crops)
            self._directions = [
                "180" if str(label) == "180" and float(score) > threshold else "0" for label, score in results
            ]
            return turned, results, elapsed

        self._engine.text_cls = classify_and_keep

    @classmethod
    def from_config(cls, config: OcrConfig) -> OcrRuntime:
        return cls(config)

    def read(self, data: bytes, *, param: str | None = None) -> OcrResult:
        """Decode client image bytes (the safe decoder's limits) and read their text.

        Raises `MediaError` for bytes that are not an acceptable image."""
        started = time.perf_counter()
        image = decode_image(data, self.config.image_limits, param=param)
        rgb = np.asarray(image)
        result = self.read_array(rgb)
        return OcrResult(result.lines, result.width, result.height, time.perf_counter() - started, result.timings)

    def read_array(self, rgb: np.ndarray) -> OcrResult:
        """Read the text of an RGB image array `[H, W, 3]` uint8.

        A page upside down is read line by line by the direction classifier, and its lines are put
        in the page's order (most lines turned by the classifier: the page is); a page read with low
        confidence is read again half turned (the classifier missed an upside-down page: blur, small
        print). A page on its side
        (most lines found are taller than wide) is read again a quarter turned, and the reading with
        the more confident text wins (which quarter is settled by the classifier again). Boxes are
        always in the pixels of the image as sent."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise MediaError("expected an RGB image")
        height, width = rgb.shape[:2]
        started = time.perf_counter()
        if min(height, width) < 8:  # nothing a detector can find; RapidOCR's resizing divides by it
            return OcrResult((), width, height, time.perf_counter() - started)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        timings: dict[str, float] = {}
        lines = self._read_turned(bgr, 0, timings)
        tall = sum(1 for line in lines if _height(line) > 1.5 * _width(line))
        if lines and tall > len(lines) / 2:  # on its side: read it a quarter turned
            turned = self._read_turned(bgr, 1, timings)
            # The recogniser reads a tall box turned too, so both readings may score alike: the
            # turned one has the page's rows, so it wins unless it read clearly less.
            if _weight(turned) >= 0.8 * _weight(lines):
                lines = turned
        elif lines and sum(line.confidence for line in lines) / len(lines) < LOW_CONFIDENCE:
            turned = self._read_turned(bgr, 2, timings)  # upside down, and the classifier missed it
            if _weight(turned) > _weight(lines):
                lines = turned
        return OcrResult(tuple(lines), width, height, time.perf_counter() - started, timings)

    def _read_turned(self, bgr: np.ndarray, quarter_turns: int, timings: dict[str, float]) -> list[OcrLine]:
        """The lines of `bgr` turned `quarter_turns` × 90° anticlockwise, in reading order, their
        boxes mapped back to `bgr`'s pixels."""
        height, width = bgr.shape[:2]
        turned = np.ascontiguousarray(np.rot90(bgr, quarter_turns)) if quarter_turns else bgr
        fitted, scale = _fit_for_detection(turned, self.config.max_side)
        turned_h, turned_w = turned.shape[:2]
        with self._lock:
            self._directions = []
            # Any keyword resets RapidOCR's score threshold to its 0.5 unless given again.
            raw, elapsed = self._engine(fitted, return_word_box=True, text_score=self.config.min_confidence)
            directions = self._directions
        for name, seconds in zip(("detection_s", "classification_s", "recognition_s"), elapsed or ()):
            timings[name] = timings.get(name, 0.0) + float(seconds)
        lines: list[OcrLine] = []
        for entry in raw or []:
            box, text, score = entry[0], entry[1], entry[2]
            char_boxes = entry[3] if len(entry) > 3 else None
            text = _spaced(str(text), char_boxes).strip()
            if not text or float(score) < self.config.min_confidence:
                continue
            corners = tuple((min(max(float(x) / scale, 0.0), turned_w), min(max(float(y) / scale, 0.0), turned_h)) for x, y in box)
            lines.append(OcrLine(text, corners, float(score)))  # type: ignore[arg-type]
        upside_down = sum(d == "180" for d in directions) > len(directions) / 2
        ordered = reading_order(lines, upside_down)
        if not quarter_turns:
            return ordered
        return [
            dataclasses.replace(line, box=tuple(_unturn(x, y, quarter_turns, width, height) for x, y in line.box))
            for line in ordered
        ]


LOW_CONFIDENCE = 0.8  # mean line confidence under which a page is also read half turned


# RapidOCR letterboxes a wide strip (over 1:8) to 1:4 itself, and none of a tall one, whose short
# side it then scales up to 736 px; both are padded to 1:4 here (the detector's text size as
# RapidOCR gives it for wide strips: more padding scales the text up until words split).
MAX_ASPECT = 4


def _fit_for_detection(bgr: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """`bgr` as the detector gets it, and the scale applied: the long side at most `max_side`, and
    a strip over 1:8 padded (white, bottom/right) to 1:`MAX_ASPECT`; sides at least 32 px.
    RapidOCR's own resizing would round a thin strip's short side to 0 (an exception), or scale a
    thin tall one up until the detector spends minutes and gigabytes on it."""
    import cv2

    height, width = bgr.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    height, width = bgr.shape[:2]
    strip = max(height, width) > 8 * min(height, width)
    padded_h = max(height, math.ceil(width / MAX_ASPECT) if strip else 0, 32)
    padded_w = max(width, math.ceil(height / MAX_ASPECT) if strip else 0, 32)
    if (padded_h, padded_w) != (height, width):
        bgr = np.pad(bgr, ((0, padded_h - height), (0, padded_w - width), (0, 0)), constant_values=255)
    return np.ascontiguousarray(bgr), scale


def _weight(lines: list[OcrLine]) -> float:
    """How much confident text a reading found (characters × confidence, squared: garbage read from
    a page upside down comes with low confidences)."""
    return sum(len(line.text) * line.confidence**2 for line in lines)


def _unturn(x: float, y: float, quarter_turns: int, width: int, height: int) -> Point:
    """A point of the image turned `quarter_turns` × 90° anticlockwise (np.rot90), in the pixels of
    the original `width` × `height` image."""
    if quarter_turns == 1:
        return width - 1 - y, x
    if quarter_turns == 2:
        return width - 1 - x, height - 1 - y
    return y, height - 1 - x
