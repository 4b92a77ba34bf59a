"""A synthetic image–caption set for vision-projector training: Pillow-drawn shapes → cached CLIP patch features.

Recipe (`VisionDataConfig`, recorded in `recipe.json` and in every projector checkpoint trained on it):

1. Each image shows 1–4 copies of one shape in one colour, placed together in one region of the
   canvas (`fusion.shapes`, which also draws and captions them): "Two red circles on the left."
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
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from fusion.shapes import (  # noqa: F401  (re-exported for fusion.evaluate)
    ATTRIBUTES,
    CANVAS,
    COLOURS,
    COUNT_WORDS,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    Scene,
    attribute_hits,
    render,
    seen_pairs,
)
from fusion.shards import (
    RECIPE,
    Encoder,
    Instructions,
    prepare_set_dir,
    read_manifest,
    read_recipe,
    read_tensors,
    write_recipe,
    write_shards,
)

DATA_VERSION = 1
MODALITY = "image"  # recorded in the recipe: `chorus train-projector` infers the modality from it

CAPTION_INSTRUCTION = "Describe the image."
CAPTION_PARAPHRASES: tuple[str, ...] = (
    "What is in this picture?",
    "Write a short caption for this image.",
    "Describe what you see.",
)
INSTRUCTIONS = Instructions(CAPTION_INSTRUCTION, CAPTION_PARAPHRASES, canonical_share=0.5, media_first_share=0.2)

SPLITS = ("train", "eval_seen", "eval_combos")
EVAL_SPLITS = SPLITS[1:]
CAPTION_EVAL_SPLITS = ("eval_heldout",)  # caption files: whole images held out
DECODE_THREADS = 8  # Pillow releases the GIL while decoding, so caption-set images decode in parallel
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


# --- the plan ----------------------------------------------------------------------------------------


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


# --- encoder -----------------------------------------------------------------------------------------


def clip_config(config: VisionDataConfig, threads: int | None = None, device: str = "cpu"):
    """The `ClipConfig` this set's features come from."""
    from modalities.vision import ClipConfig

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
    from modalities.vision import ClipRuntime

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
    out = prepare_set_dir(config, config.out_dir, "set")
    drawn = config.captions is None
    records = plan_images(config) if drawn else plan_caption_set(config)
    write_recipe(out, _recipe(config, records, encoder_identity))
    if drawn:
        (out / IMAGES_DIR).mkdir(exist_ok=True)
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        encode = _image_encoder(config, clip_runtime, out, pool)
        write_shards(out, records, config.shard_size, encode, desc="images", unit="img")
    log(f"{len(records)} images, features from {encoder_identity.get('name')}")
    return out


def _recipe(config: VisionDataConfig, records: Sequence[ImageRecord], encoder_identity: dict) -> dict:
    drawn = config.captions is None
    splits = ("train", *(EVAL_SPLITS if drawn else CAPTION_EVAL_SPLITS))
    recipe = {
        "version": DATA_VERSION,
        "modality": MODALITY,
        "config": config.model_dump(),
        "encoder": encoder_identity,
        "eval_splits": list(splits[1:]),
        "instructions": INSTRUCTIONS.all(),
        "captions": {split: sum(r.split == split for r in records) for split in splits},
    }
    if not drawn:
        return recipe | {"distinct_images": {split: len({r.image for r in records if r.split == split}) for split in splits}}
    return recipe | {
        "generator": "Pillow ImageDraw",
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "positions": {name: phrase for name, (phrase, _box) in POSITIONS.items()},
        "counts": [1, len(COUNT_WORDS)],
        "heldout_pairs": [list(p) for p in HELDOUT_PAIRS],
        "canvas": CANVAS,
    }


def _image_encoder(config: VisionDataConfig, clip_runtime, out: Path, pool: ThreadPoolExecutor) -> Encoder:
    """`fusion.shards.Encoder` for the set: draws (and saves) or loads each shard's images, then
    CLIP-encodes them in batches, once per distinct image."""
    drawn = config.captions is None
    root = Path(config.image_root or ".").expanduser()

    def load(record: ImageRecord) -> Image.Image:
        with Image.open(root / record.image) as image:  # type: ignore[operator]
            return image.convert("RGB")

    def encode(shard: list[ImageRecord], progress: Callable[[int], object]) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for start in range(0, len(shard), ENCODE_BATCH):
            group = shard[start : start + ENCODE_BATCH]
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
            progress(len(group))
        return tensors

    return encode


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
