"""Reading a sharded feature set (the speech corpus, the image set): one layout, one reader.

A set directory holds `shard-NNN.jsonl` (one JSON record per line) beside `shard-NNN.safetensors`
(the encoder features those records point to), `manifest.jsonl` once every shard is complete, and
`recipe.json` (how the set was made).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import torch

MANIFEST = "manifest.jsonl"
RECIPE = "recipe.json"
T = TypeVar("T")


def read_manifest(data_dir: str | Path, record: Callable[..., T], what: str, command: str) -> list[T]:
    """Every record of the set, or of its complete shards while the set is still being built.
    `what` / `command`: the kind of set and the command that builds it, for the error message."""
    root = Path(data_dir).expanduser()
    path = root / MANIFEST
    parts = [path] if path.exists() else sorted(root.glob("shard-*.jsonl"))
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
