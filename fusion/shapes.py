"""The synthetic shapes world of the image set: what a scene holds, how it is drawn and captioned,
and how a caption is read back into attributes.

Each image shows 1–4 copies of one shape (circle, square, triangle, star) in one colour, placed
together in one region of the canvas (left, right, top, bottom, centre) on a light background;
sizes, exact places, colour shades and background tone are drawn at random. Its caption names all
four attributes: "Two red circles on the left." Some colour × shape pairs (`HELDOUT_PAIRS`) are
kept out of training so that evaluation measures composition, not memorisation.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 25),
    "purple": (135, 55, 175),
    "orange": (245, 125, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Region name → caption phrase and box (x0, y0, x1, y1) as fractions of the canvas. The side boxes
# stop short of the corners so that no object centre could belong to two regions (a shape in the
# top-left corner would be "left" and "top" at once).
POSITIONS: dict[str, tuple[str, tuple[float, float, float, float]]] = {
    "left": ("on the left", (0.0, 0.2, 0.38, 0.8)),
    "right": ("on the right", (0.62, 0.2, 1.0, 0.8)),
    "top": ("at the top", (0.2, 0.0, 0.8, 0.38)),
    "bottom": ("at the bottom", (0.2, 0.62, 0.8, 1.0)),
    "centre": ("in the centre", (0.25, 0.25, 0.75, 0.75)),
}
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
# Never in training. A Latin-square choice: every shape and four of the colours lose exactly one
# partner, so each attribute on its own is still learnable from the training split.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (("red", "star"), ("green", "triangle"), ("blue", "square"), ("yellow", "circle"))

CANVAS = 224  # drawn at the input size of the common CLIPs; the encoder's preprocess resizes as it must
RADIUS = (0.075, 0.11)  # object radius as a fraction of the canvas
MIN_RADIUS = 0.045  # placement shrinks objects down to this before giving up
GAP = 0.02  # minimum space between two objects, fraction of the canvas
PLACEMENT_TRIES = 200
BACKGROUND = (215, 255)  # grey level range of the background
SHADE_JITTER = 18  # per-channel shade variation (small enough that yellow never turns orange)
STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
SQUARE_HALF_SIDE = 0.9  # × r: a square of half-side r looks larger than a circle of radius r
# How far each shape reaches from its centre, × r: placement keeps these circles apart, so that no
# two objects touch (a square's corners reach past r).
REACH = {"circle": 1.0, "square": SQUARE_HALF_SIDE * math.sqrt(2), "triangle": 1.0, "star": 1.0}

ATTRIBUTES = ("count", "colour", "shape", "position")


@dataclass(frozen=True)
class Scene:
    """What one image shows; the caption is a function of it."""

    count: int
    colour: str
    shape: str
    position: str

    @property
    def caption(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        text = f"{COUNT_WORDS[self.count - 1]} {self.colour} {noun} {POSITIONS[self.position][0]}."
        return text[0].upper() + text[1:]


def seen_pairs() -> list[tuple[str, str]]:
    """The colour × shape pairs that training images may show (all but `HELDOUT_PAIRS`)."""
    held = set(HELDOUT_PAIRS)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]


# --- drawing -----------------------------------------------------------------------------------------


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * SQUARE_HALF_SIDE
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * STAR_INNER
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _place(
    count: int, box: tuple[float, float, float, float], reach: float, rng: random.Random
) -> list[tuple[float, float, float]]:
    """`count` non-touching (cx, cy, r) inside `box` (fractions), each object reaching `reach` × r
    from its centre; objects shrink until they fit."""
    x0, y0, x1, y1 = box
    r = rng.uniform(*RADIUS)
    while r >= MIN_RADIUS:
        placed: list[tuple[float, float, float]] = []
        for _ in range(PLACEMENT_TRIES):
            if len(placed) == count:
                break
            cx, cy = rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)
            if all(math.hypot(cx - px, cy - py) > 2 * reach * r + GAP for px, py, _ in placed):
                placed.append((cx, cy, r))
        if len(placed) == count:
            return placed
        r *= 0.9
    raise AssertionError(f"could not place {count} objects in {box}")  # the constants above guarantee room


def render(scene: Scene, seed: int, size: int = CANVAS) -> Image.Image:
    """Draw `scene` as an RGB `size`×`size` image; the same (scene, seed) gives the same pixels."""
    rng = random.Random(seed)
    grey = rng.randint(*BACKGROUND)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    base = COLOURS[scene.colour]
    for cx, cy, r in _place(scene.count, POSITIONS[scene.position][1], REACH[scene.shape], rng):
        fill = tuple(min(255, max(0, c + rng.randint(-SHADE_JITTER, SHADE_JITTER))) for c in base)
        cx, cy, r = cx * size, cy * size, r * size
        if scene.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_polygon(scene.shape, cx, cy, r), fill=fill)
    return image


# --- captions → attributes ---------------------------------------------------------------------------

_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "centre": "centre", "center": "centre", "middle": "centre"}
_COUNT_WORDS = {w: i + 1 for i, w in enumerate(COUNT_WORDS)}
# "a"/"an" is a count only right before a colour or shape ("a red star"); anywhere else it is just
# the commonest word of English, and would credit any chatter with "one" of something.
_ARTICLES = ("a", "an", "single")


def _words(text: str) -> list[str]:
    return "".join(ch if ch.isalpha() else " " for ch in text.lower()).split()


def parse_caption(text: str) -> dict[str, object]:
    """The first count, colour, shape and position word of a caption (None where there is none).

    Plural shapes count as the shape ("circles" → "circle")."""
    found: dict[str, object] = dict.fromkeys(ATTRIBUTES)
    shapes = {s: s for s in SHAPES} | {s + "s": s for s in SHAPES}
    words = _words(text)
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        if found["count"] is None and (word in _COUNT_WORDS or (word in _ARTICLES and (following in COLOURS or following in shapes))):
            found["count"] = _COUNT_WORDS.get(word, 1)
        elif found["colour"] is None and word in COLOURS:
            found["colour"] = word
        elif found["shape"] is None and word in shapes:
            found["shape"] = shapes[word]
        elif found["position"] is None and word in _POSITION_WORDS:
            found["position"] = _POSITION_WORDS[word]
    return found


def attribute_hits(scene: Scene, caption: str) -> dict[str, bool]:
    """Per attribute: does the caption name the scene's value?"""
    parsed = parse_caption(caption)
    return {name: parsed[name] == getattr(scene, name) for name in ATTRIBUTES}
