"""A sharded feature set (the speech corpus, the image set): one layout, one writer, one reader.

A set directory holds `shard-NNN.jsonl` (one JSON record per line) beside `shard-NNN.safetensors`
(the encoder features those records point to), `manifest.jsonl` once every shard is complete, and
`recipe.json` (how the set was made, its config included). A shard's `.jsonl` is written after its
features, so its presence marks the shard complete: an interrupted build resumes at the first
missing one, and training can start on the shards already there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel

MANIFEST = "manifest.jsonl"
RECIPE = "recipe.json"
SHARD_RECORDS = "shard-*.jsonl"
T = TypeVar("T")

# `encode(shard, progress)`: the records of one shard → {tensor key: features}; `progress(n)` after
# each n records. It may fill in record fields (the manifest is written after it returns).
Encoder = Callable[[list[Any], Callable[[int], object]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Instructions:
    """What a set's training turns ask the model to do with the media. The canonical instruction is
    the one evaluation uses and `canonical_share` of training turns; the rest use a paraphrase, so
    that the projector does not key on one wording. `media_first_share` of training turns put the
    media part before the instruction, as some requests do."""

    canonical: str
    paraphrases: tuple[str, ...]
    canonical_share: float
    media_first_share: float

    def all(self) -> list[str]:
        return [self.canonical, *self.paraphrases]


# --- writing -----------------------------------------------------------------------------------------


def prepare_set_dir(config: BaseModel, out_dir: str | Path, what: str) -> Path:
    """Create the set directory; refuse one whose recipe was written for another config (a field
    added to the config since counts as its default). `what`: the kind of set, for the message."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = out / RECIPE
    if recipe_path.exists():
        defaults = {name: field.default for name, field in type(config).model_fields.items()}
        previous = defaults | json.loads(recipe_path.read_text())["config"]
        if previous != config.model_dump():
            raise ValueError(f"{out} holds a {what} built with another config; use a fresh --out directory")
    return out


def write_recipe(out: Path, recipe: dict) -> None:
    (out / RECIPE).write_text(json.dumps(recipe, indent=2))


def write_shards(out: Path, records: Sequence[Any], shard_size: int, encode: Encoder, desc: str, unit: str) -> None:
    """Write `records` (dataclasses with a `shard` field) in shards of `shard_size`, their features
    from `encode`; shards complete from an earlier run are kept. Then the manifest of them all."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    with tqdm(total=len(records), desc=desc, unit=unit) as bar:
        for n, start in enumerate(range(0, len(records), shard_size)):
            shard = list(records[start : start + shard_size])
            name = f"shard-{n:03d}"
            meta_path = out / f"{name}.jsonl"
            if meta_path.exists():  # finished in an earlier run
                bar.update(len(shard))
                continue
            for record in shard:
                record.shard = f"{name}.safetensors"
            save_file(encode(shard, bar.update), str(out / f"{name}.safetensors"))
            meta_path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in shard))
    lines = [path.read_text() for path in sorted(out.glob(SHARD_RECORDS))]
    (out / MANIFEST).write_text("".join(lines))


# --- reading -----------------------------------------------------------------------------------------


def complete_shards(data_dir: str | Path) -> int:
    """How many shards of the set are complete (a build may still be adding more)."""
    return len(list(Path(data_dir).expanduser().glob(SHARD_RECORDS)))


def read_manifest(data_dir: str | Path, record: Callable[..., T], what: str, command: str) -> list[T]:
    """Every record of the set, or of its complete shards while the set is still being built.
    `what` / `command`: the kind of set and the command that builds it, for the error message."""
    root = Path(data_dir).expanduser()
    path = root / MANIFEST
    parts = [path] if path.exists() else sorted(root.glob(SHARD_RECORDS))
    if not parts:
        raise FileNotFoundError(f"no {what} at {root} (run `{command}` first)")
    return [record(**json.loads(line)) for part in parts for line in part.read_text().splitlines() if line]


def read_recipe(data_dir: str | Path) -> dict:
    return json.loads((Path(data_dir).expanduser() / RECIPE).read_text())


def read_tensors(data_dir: str | Path, entries: Iterable[tuple[str, str, str]]) -> dict[str, torch.Tensor]:
    """(record id, shard file, tensor key) → {record id: tensor}, reading only the shards needed;
    records that share a key (captions of one image) share one tensor in memory."""
    from safetensors import safe_open

    by_shard: dict[str, list[tuple[str, str]]] = {}
    for record_id, shard, key in entries:
        by_shard.setdefault(shard, []).append((record_id, key))
    out: dict[str, torch.Tensor] = {}
    for shard, group in by_shard.items():
        loaded: dict[str, torch.Tensor] = {}
        with safe_open(str(Path(data_dir).expanduser() / shard), framework="pt") as f:
            for record_id, key in group:
                if key not in loaded:
                    loaded[key] = f.get_tensor(key)
                out[record_id] = loaded[key]
    return out
