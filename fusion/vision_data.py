"""A synthetic image–caption set for vision-projector training: Pillow-drawn shapes → cached CLIP patch features.

Recipe (`VisionDataConfig`, recorded in `recipe.json` and in every projector checkpoint trained on it):

1. Each image shows 1–4 copies of one shape (circle, square, triangle, star) in one colour, placed
   together in one region of the canvas (left, right, top, bottom, centre) on a light background;
   sizes, exact places, colour shades and background tone are drawn at random. Its caption names
   all four attributes: "Two red circles on the left."
2. Splits measure composition, not memorisation: some colour × shape pairs (`HELDOUT_PAIRS`, each
   colour and each shape still seen in training with other partners) never occur in training and
   make up `eval_combos`; `eval_seen` holds fresh images of pairs seen in training.
3. Everything is drawn from one seeded generator per split, so the same config gives the same
   images, captions and splits byte for byte.
4. Images are written as PNGs (so another encoder can re-encode the set) and the frozen CLIP's patch
   features `[num_patches, width]` (`ClipRuntime.patch_features`, the configured feature layer) are
   cached float16 in safetensors shards, one key per image; an interrupted build resumes by shard.

The same builder reads a real caption set instead (`captions` + `image_root`): LLaVA-Pretrain's
`blip_laion_cc_sbu_558k.json`, a COCO `captions_*.json`, or JSON lines of `{"image", "caption"}`.
Whole images are held out (`eval_heldout`); there are no attributes to score, only caption
cross-entropy. Features are cached per image, so mind the disk: 49 × 768 float16 (ViT-B/32) is
75 KB per image, 576 × 1024 (ViT-L/14-336) 1.2 MB.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from fusion.shards import MANIFEST, RECIPE, read_manifest, read_recipe, read_tensors

DATA_VERSION = 1
MODALITY = "image"  # recorded in the recipe: `chorus train-projector` infers the modality from it

CAPTION_INSTRUCTION = "Describe the image."
# Paraphrases keep the projector from keying on one instruction; the canonical one is used for
# evaluation and appears most often in training.
CAPTION_PARAPHRASES: tuple[str, ...] = (
    "What is in this picture?",
    "Write a short caption for this image.",
    "Describe what you see.",
)
CANONICAL_INSTRUCTION_SHARE = 0.5
IMAGE_FIRST_SHARE = 0.2  # some requests put the image before the instruction

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

SPLITS = ("train", "eval_seen", "eval_combos")
EVAL_SPLITS = SPLITS[1:]
CAPTION_EVAL_SPLITS = ("eval_heldout",)  # caption files: whole images held out
DECODE_THREADS = 8  # Pillow releases the GIL while decoding, so caption-set images decode in parallel
ATTRIBUTES = ("count", "colour", "shape", "position")
IMAGES_DIR = "images"


class VisionDataConfig(BaseModel):
    """How to build the synthetic image–caption set and which frozen CLIP encodes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out_dir: str = Field(description="Directory for PNGs, manifest, recipe and feature shards (outside the repo)")
    train_images: int = Field(
        4000, ge=1, description="Training images (seen colour × shape pairs only); with `captions`, at most this many training captions"
    )
    eval_images: int = Field(200, ge=1, description="Images per held-out split (eval_seen, eval_combos; with `captions`, eval_heldout)")
    captions: str | None = Field(
        None,
        description="Real captions instead of drawn shapes: LLaVA-Pretrain JSON, COCO captions JSON, or JSONL of "
        "{image, caption}; image paths are relative to image_root",
    )
    image_root: str | None = Field(None, description="Directory the caption file's image paths are relative to")
    clip_model: str = Field(description="open_clip architecture name or model-config JSON (ClipConfig.model_name)")
    clip_pretrained: str | None = Field(
        None, description="open_clip tag or local checkpoint; null = random weights seeded by clip_seed"
    )
    clip_seed: int = Field(0, description="torch seed before building a random-init CLIP (its weights)")
    feature_layer: int = Field(-2, description="Image-tower block whose output gives the patch features")
    shard_size: int = Field(1000, ge=1, description="Images per feature shard")
    seed: int = Field(0, description="Seed for drawing images and splits")


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


@dataclass
class ImageRecord:
    """One image + caption of the set (a manifest line). Drawn images carry their scene and drawing
    seed; images of a caption file carry their path (several captions may share one image)."""

    id: str
    split: str
    caption: str
    count: int | None = None
    colour: str | None = None
    shape: str | None = None
    position: str | None = None
    seed: int | None = None  # drawing seed: `render(scene, seed)` redraws the image exactly
    image: str | None = None  # caption files: the image path, relative to image_root
    shard: str = ""

    @property
    def scene(self) -> Scene | None:
        if self.count is None:
            return None
        return Scene(self.count, self.colour, self.shape, self.position)  # type: ignore[arg-type]

    @property
    def key(self) -> str:
        """The image's key in the feature shards."""
        return self.image or self.id


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


# --- the plan ----------------------------------------------------------------------------------------


def seen_pairs() -> list[tuple[str, str]]:
    held = set(HELDOUT_PAIRS)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]


def plan_images(config: VisionDataConfig) -> list[ImageRecord]:
    """Every image's scene, split and drawing seed; deterministic given the config."""
    records: list[ImageRecord] = []
    sizes = {"train": config.train_images, "eval_seen": config.eval_images, "eval_combos": config.eval_images}
    for split_index, split in enumerate(SPLITS):
        # One generator per split: the eval images do not change when the training set grows.
        rng = random.Random(f"{config.seed}/{split_index}")
        pairs = list(HELDOUT_PAIRS) if split == "eval_combos" else seen_pairs()
        for i in range(sizes[split]):
            colour, shape = rng.choice(pairs)
            scene = Scene(count=rng.randint(1, len(COUNT_WORDS)), colour=colour, shape=shape, position=rng.choice(list(POSITIONS)))
            records.append(
                ImageRecord(
                    id=f"{split}-{i:05d}",
                    split=split,
                    count=scene.count,
                    colour=colour,
                    shape=shape,
                    position=scene.position,
                    caption=scene.caption,
                    seed=rng.getrandbits(32),
                )
            )
    # Eval images first, so that they sit in the first shard.
    return sorted(records, key=lambda r: r.split == "train")


def read_captions(path: str | Path) -> list[tuple[str, str]]:
    """(image path, caption) pairs from LLaVA-Pretrain JSON (a list of records with `image` and a
    human/gpt `conversations` pair), COCO captions JSON (`images` + `annotations`), or JSON lines of
    `{"image", "caption"}`."""
    path = Path(path).expanduser()
    text = path.read_text()
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [(row["image"], row["caption"].strip()) for row in rows]
    data = json.loads(text)
    if isinstance(data, dict) and "annotations" in data:
        files = {image["id"]: image["file_name"] for image in data["images"]}
        return [(files[a["image_id"]], a["caption"].strip()) for a in data["annotations"]]
    if isinstance(data, list):
        pairs = []
        for row in data:
            answers = [turn["value"] for turn in row.get("conversations", []) if turn.get("from") == "gpt"]
            if "image" in row and answers:
                pairs.append((row["image"], answers[0].strip()))
        return pairs
    raise ValueError(f"{path}: not a LLaVA-Pretrain JSON, COCO captions JSON or {{image, caption}} JSONL file")


def plan_caption_set(config: VisionDataConfig) -> list[ImageRecord]:
    """Records for a caption file: `eval_images` whole images (all their captions) held out, then up
    to `train_images` training captions; image order shuffled with `seed`."""
    assert config.captions is not None
    by_image: dict[str, list[str]] = {}
    for image, caption in read_captions(config.captions):
        by_image.setdefault(image, []).append(caption)
    images = sorted(by_image)
    random.Random(config.seed).shuffle(images)
    held, rest = images[: config.eval_images], images[config.eval_images :]
    records = [
        ImageRecord(id=f"eval_heldout-{i:07d}", split="eval_heldout", caption=c, image=image)
        for i, (image, c) in enumerate((image, c) for image in held for c in by_image[image])
    ]
    train = [(image, c) for image in rest for c in by_image[image]][: config.train_images]
    records += [ImageRecord(id=f"train-{i:07d}", split="train", caption=c, image=image) for i, (image, c) in enumerate(train)]
    return records


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


# --- encoder -----------------------------------------------------------------------------------------


def clip_config(config: VisionDataConfig, threads: int | None = None, device: str = "cpu"):
    """The `ClipConfig` this set's features come from."""
    from modalities.vision.clip import ClipConfig

    return ClipConfig(
        model_name=config.clip_model,
        pretrained=config.clip_pretrained,
        random_init=config.clip_pretrained is None,
        feature_layer=config.feature_layer,
        threads=threads,
        device=device,
    )


def build_clip(config: VisionDataConfig, threads: int | None = None, device: str = "cpu"):
    """The frozen CLIP runtime; random-init weights are made under `clip_seed`, so they are reproducible."""
    from modalities.vision.clip import ClipRuntime

    state = torch.random.get_rng_state()
    torch.manual_seed(config.clip_seed)
    try:
        return ClipRuntime.from_config(clip_config(config, threads, device))
    finally:
        torch.random.set_rng_state(state)


# --- building ----------------------------------------------------------------------------------------

ENCODE_BATCH = 64


def build_vision_data(
    config: VisionDataConfig,
    clip_runtime,
    encoder_identity: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the set under `config.out_dir`; resumes from complete shards. Returns the directory.

    `clip_runtime`: a `modalities.vision.clip.ClipRuntime` (or anything with `encode_images(images) →
    (patches, pooled)`); `encoder_identity`: what the recipe records as the encoder (the
    `ModelIdentity` fields), so projector checkpoints can name it."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    out = Path(config.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = out / RECIPE
    if recipe_path.exists():
        # A field added since the set was built counts as its default.
        defaults = {name: field.default for name, field in VisionDataConfig.model_fields.items()}
        previous = defaults | json.loads(recipe_path.read_text())["config"]
        if previous != config.model_dump():
            raise ValueError(f"{out} holds a set built with another config; use a fresh --out directory")

    drawn = config.captions is None
    records = plan_images(config) if drawn else plan_caption_set(config)
    splits = ("train", *(EVAL_SPLITS if drawn else CAPTION_EVAL_SPLITS))
    recipe = {
        "version": DATA_VERSION,
        "modality": MODALITY,
        "config": config.model_dump(),
        "encoder": encoder_identity,
        "eval_splits": list(splits[1:]),
        "instructions": [CAPTION_INSTRUCTION, *CAPTION_PARAPHRASES],
        "captions": {split: sum(r.split == split for r in records) for split in splits},
    }
    if drawn:
        (out / IMAGES_DIR).mkdir(exist_ok=True)
        recipe |= {
            "generator": "Pillow ImageDraw",
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "positions": {name: phrase for name, (phrase, _box) in POSITIONS.items()},
            "counts": [1, len(COUNT_WORDS)],
            "heldout_pairs": [list(p) for p in HELDOUT_PAIRS],
            "canvas": CANVAS,
        }
    else:
        recipe["distinct_images"] = {split: len({r.image for r in records if r.split == split}) for split in splits}
    recipe_path.write_text(json.dumps(recipe, indent=2))
    root = Path(config.image_root or ".").expanduser()

    def load(record: ImageRecord) -> Image.Image:
        with Image.open(root / record.image) as image:  # type: ignore[operator]
            return image.convert("RGB")

    shards = [records[i : i + config.shard_size] for i in range(0, len(records), config.shard_size)]
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool, tqdm(total=len(records), desc="images", unit="img") as bar:
        for n, shard in enumerate(shards):
            name = f"shard-{n:03d}"
            meta_path = out / f"{name}.jsonl"
            if meta_path.exists():  # finished in an earlier run
                bar.update(len(shard))
                continue
            tensors: dict[str, torch.Tensor] = {}
            for start in range(0, len(shard), ENCODE_BATCH):
                group = shard[start : start + ENCODE_BATCH]
                for record in group:
                    record.shard = f"{name}.safetensors"
                todo = list({r.key: r for r in group if r.key not in tensors}.values())  # one encode per image
                if drawn:
                    images = [render(r.scene, r.seed) for r in todo]  # type: ignore[arg-type]
                    for record, image in zip(todo, images):
                        image.save(out / IMAGES_DIR / f"{record.id}.png", optimize=True)
                else:
                    images = list(pool.map(load, todo))
                if todo:
                    patches, _pooled = clip_runtime.encode_images(images)
                    for record, features in zip(todo, patches):
                        tensors[record.key] = features.to(torch.float16).contiguous().cpu()
                bar.update(len(group))
            save_file(tensors, str(out / f"{name}.safetensors"))
            # The metadata file is written last: its presence marks the shard complete.
            meta_path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in shard))

    lines = [p.read_text() for p in sorted(out.glob("shard-*.jsonl"))]
    (out / MANIFEST).write_text("".join(lines))
    log(f"{len(records)} images, features from {encoder_identity.get('name')}")
    return out


# --- reading -----------------------------------------------------------------------------------------


def is_vision_data(data_dir: str | Path) -> bool:
    """Whether `data_dir` holds a set built by this module (rather than a speech corpus)."""
    path = Path(data_dir).expanduser() / RECIPE
    return path.exists() and json.loads(path.read_text()).get("modality") == MODALITY


def load_manifest(data_dir: str | Path) -> list[ImageRecord]:
    return read_manifest(data_dir, ImageRecord, "image set", "chorus make-vision-data")


def load_recipe(data_dir: str | Path) -> dict:
    return read_recipe(data_dir)


def eval_splits(data_dir: str | Path) -> tuple[str, ...]:
    """The held-out splits of a set: eval_seen + eval_combos (drawn) or eval_heldout (caption file)."""
    return tuple(load_recipe(data_dir).get("eval_splits", EVAL_SPLITS))


def load_features(data_dir: str | Path, records: Iterable[ImageRecord]) -> dict[str, torch.Tensor]:
    """record id → float16 patch features `[num_patches, width]` (reads only the shards needed;
    captions of one image share one tensor: COCO has five)."""
    return read_tensors(data_dir, ((record.id, record.shard, record.key) for record in records))


def encoder_identity(config: VisionDataConfig) -> dict:
    """The encoder identity recorded in the recipe (`fusion.checkpoint.clip_identity` fields)."""
    from fusion.checkpoint import clip_identity

    return asdict(clip_identity(config.clip_model, config.clip_pretrained, seed=config.clip_seed))
