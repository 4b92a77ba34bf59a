"""Projector checkpoints: a directory holding `projector.safetensors` + `projector.json`.

The JSON metadata makes the checkpoint self-describing (architecture is data): the projector kind
and dims, the encoder and LLM it was trained against (name + weights SHA-256), the training command,
the data recipe and the eval figures. A projector maps one encoder's features into one LLM's
embedding space, so `load_projector` refuses a different encoder or LLM with a clear message rather
than letting the LLM read noise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusion.projectors import build_projector
from modalities.paths import PACKAGED, sha256_file

FORMAT = "chorus-projector"
FORMAT_VERSION = 1
WEIGHTS_FILE = "projector.safetensors"
METADATA_FILE = "projector.json"
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ProjectorMismatchError(ValueError):
    """The projector was trained for another encoder or LLM than the one it is loaded against."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model a projector is bound to: a readable name and the SHA-256 of its weights.

    `sha256` is None where the weights cannot be hashed locally (a hub name); identities then
    compare by name only.
    """

    name: str
    sha256: str | None = None

    def matches(self, other: ModelIdentity) -> bool:
        if self.sha256 and other.sha256:
            return self.sha256 == other.sha256
        return self.name == other.name

    def describe(self) -> str:
        return f"{self.name!r} (weights sha256 {self.sha256[:12]}…)" if self.sha256 else repr(self.name)


# --- identities of the configured models ------------------------------------------------------------


def _combined(hashes: dict[str, str]) -> str:
    """One hash for a model stored in several files (one file: that file's own hash)."""
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def llm_identity(model: str) -> ModelIdentity:
    """Identity of an `LLMConfig.model` value: "packaged", a local directory, or a hub name.

    The prepare step records the weights' SHA-256 (`chorus-weights.json`); other local directories
    are hashed here (seconds for a small model).
    """
    from modalities import paths
    from modalities.llm.weights import SIDECAR

    if model == PACKAGED:
        directory = paths.packaged_llm_dir()
    else:
        directory = Path(model).expanduser()
        if not directory.is_dir():
            return ModelIdentity(name=model)
    sidecar = directory / SIDECAR
    if sidecar.exists():
        hashes = json.loads(sidecar.read_text())["weights_sha256"]
    else:
        hashes = {p.name: sha256_file(p) for p in sorted(directory.glob("*.safetensors"))}
        if not hashes:
            raise FileNotFoundError(f"no *.safetensors weights in {directory} to identify the LLM by")
    return ModelIdentity(name=directory.name, sha256=_combined(hashes))


def whisper_identity(model: str) -> ModelIdentity:
    """Identity of a `WhisperConfig.model` value: "packaged", a `.pt` path, or a whisper model name."""
    from modalities import paths
    from modalities.audio.weights import sidecar_path

    if model == PACKAGED:
        checkpoint = paths.packaged_whisper_path()
        name = paths.PACKAGED_WHISPER_NAME
    else:
        checkpoint = Path(model).expanduser()
        if not checkpoint.is_file():
            return ModelIdentity(name=f"whisper-{model}")
        name = checkpoint.stem
    sidecar = sidecar_path(checkpoint)
    sha = json.loads(sidecar.read_text())["sha256"] if sidecar.exists() else sha256_file(checkpoint)
    return ModelIdentity(name=name, sha256=sha)


def clip_identity(model_name: str, pretrained: str | None, seed: int | None = None) -> ModelIdentity:
    """Identity of a CLIP (`ClipConfig.model_name` + `pretrained`).

    A local checkpoint is hashed; an open_clip tag is named (its weights live on a hub). Random
    weights (`pretrained=None`, tests and the synthetic-data proof) have no file to hash: they are
    identified by what makes them — the architecture config, the torch seed they were drawn under and
    the torch / open_clip versions that draw them."""
    import open_clip

    path = Path(model_name).expanduser()
    arch = path.stem if path.suffix == ".json" else model_name
    if pretrained is not None:
        weights = Path(pretrained).expanduser()
        if weights.is_file():
            return ModelIdentity(name=f"{arch}:{weights.name}", sha256=sha256_file(weights))
        return ModelIdentity(name=f"{arch}:{pretrained}")
    if seed is None:
        raise ValueError("a random-init CLIP is identified by its seed; pass seed=")
    architecture = json.loads(path.read_text()) if path.suffix == ".json" else open_clip.get_model_config(model_name)
    recipe = {
        "config": architecture,
        "seed": seed,
        "torch": torch.__version__.split("+")[0],
        "open_clip": open_clip.__version__,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return ModelIdentity(name=f"{arch}:random-init(seed={seed})", sha256=digest)


# --- save / load ------------------------------------------------------------------------------------


def projector_spec(module: nn.Module, kind: str) -> dict[str, Any]:
    """What `build_projector` needs to rebuild `module`."""
    if hasattr(module, "spec"):  # the connector says what it is built from
        return {"kind": kind, **module.spec()}
    spec: dict[str, Any] = {"kind": kind, "in_dim": module.in_dim, "out_dim": module.out_dim}
    hidden = getattr(module, "linear_2", None)
    if kind != "mlp2x_gelu" and hidden is not None:
        spec["hidden_dim"] = hidden.in_features
    return spec


def save_projector(
    path: str | Path,
    module: nn.Module,
    *,
    kind: str,
    encoder: ModelIdentity,
    llm: ModelIdentity,
    dtype: str = "float16",
    **metadata: Any,
) -> Path:
    """Write `module` and its metadata into directory `path`; extra keyword arguments (training
    command, data recipe, eval figures...) go into the JSON as they are. Returns the directory."""
    from safetensors.torch import save_file

    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}; known: {', '.join(STORAGE_DTYPES)}")
    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(STORAGE_DTYPES[dtype]).contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "projector": projector_spec(module, kind),
        "dtype": dtype,
        "encoder": asdict(encoder),
        "llm": asdict(llm),
        **metadata,
    }
    (out / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    directory = _directory(path)
    meta_path = directory / METADATA_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} is not a projector checkpoint: {METADATA_FILE} is missing")
    record = json.loads(meta_path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a {FORMAT} metadata file")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{meta_path} has format version {record['format_version']}; this code reads ≤ {FORMAT_VERSION}")
    return record


def update_metadata(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into a checkpoint's metadata (e.g. eval figures measured after training)."""
    record = read_metadata(path)
    record.update(fields)
    (_directory(path) / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_projector(
    path: str | Path,
    *,
    llm_hidden_size: int | None = None,
    llm: ModelIdentity | None = None,
    encoder: ModelIdentity | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a projector checkpoint → (module in eval mode, metadata).

    `path` is the checkpoint directory or its `.safetensors` file. Each of `llm`, `encoder` and
    `llm_hidden_size` that is given is checked against the metadata; a mismatch raises
    `ProjectorMismatchError` naming both sides.
    """
    from safetensors.torch import load_file

    directory = _directory(path)
    record = read_metadata(directory)
    checks = (("LLM", llm, record.get("llm")), ("encoder", encoder, record.get("encoder")))
    for role, actual, trained in checks:
        if actual is None:
            continue
        trained_id = ModelIdentity(**trained) if trained else None
        if trained_id is None or not trained_id.matches(actual):
            raise ProjectorMismatchError(
                f"projector {directory} was trained for the {role} "
                f"{trained_id.describe() if trained_id else '(unrecorded)'}, but this deployment's {role} is "
                f"{actual.describe()}; configure the matching {role} or train a projector for this one "
                f"(`chorus train-projector`)"
            )
    spec = dict(record["projector"])
    if llm_hidden_size is not None and spec["out_dim"] != llm_hidden_size:
        raise ProjectorMismatchError(
            f"projector {directory} outputs {spec['out_dim']}-dim tokens but the LLM's hidden size is {llm_hidden_size}"
        )
    kind, in_dim, out_dim = spec.pop("kind"), spec.pop("in_dim"), spec.pop("out_dim")
    module = build_projector(kind, in_dim, out_dim, **spec)
    state = {k: v.to(dtype) for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
    module.load_state_dict(state)
    return module.to(dtype).eval().requires_grad_(False), record


# The audio projector shipped in the repo for the packaged Whisper-base × SmolLM2-135M-Instruct.
PACKAGED_AUDIO_PROJECTOR = Path(__file__).resolve().parent / "checkpoints" / "whisper-base__smollm2-135m-instruct"


def _directory(path: str | Path) -> Path:
    """A checkpoint directory from a directory, its `.safetensors` file, or "packaged"."""
    if str(path) == PACKAGED:
        return PACKAGED_AUDIO_PROJECTOR
    path = Path(path).expanduser()
    return path.parent if path.suffix == ".safetensors" else path
