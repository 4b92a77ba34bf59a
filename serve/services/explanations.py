"""`chorus.explanation` as the client gets it: the decoder's figures, with boxes on image segments.

The decoder knows prompt positions, not pixels: a line of text read from an image is known by its
number, an embedded image's patch by its place in the grid. The encoder's detail (OCR lines with
corner points, the image's size) turns both into `box: [x0, y0, x1, y1]` in the image's pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def with_boxes(explanation: dict[str, Any], details: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    segments = []
    for segment in explanation.get("segments", []):
        detail = details.get(segment.get("media")) if "media" in segment else None
        box = _box(segment, detail) if detail else None
        segments.append({**segment, "box": box} if box else segment)
    return {**explanation, "segments": segments}


def _box(segment: dict[str, Any], detail: dict[str, Any]) -> list[float] | None:
    if "line" in segment and detail.get("lines"):
        # a line of the text read is one printed row: the pieces OCR found on it share its `row`
        corners = [p for line in detail["lines"] if line.get("row") == segment["line"] for p in line["box"]]
        if not corners:
            return None
        xs, ys = [p[0] for p in corners], [p[1] for p in corners]
        return [round(min(xs), 1), round(min(ys), 1), round(max(xs), 1), round(max(ys), 1)]
    if "patch" in segment and detail.get("width") and detail.get("height"):
        (row, col), (rows, cols) = segment["patch"], segment["grid"]
        w, h = detail["width"] / cols, detail["height"] / rows
        return [round(col * w, 1), round(row * h, 1), round((col + 1) * w, 1), round((row + 1) * h, 1)]
    return None
