"""The config modules stay torch-free (the HTTP ingress validates configs without loading models),
and what they check by hand agrees with the libraries they stand in for."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch
import whisper
import whisper.tokenizer

from modalities.audio.whisper_names import available_models, normalize_language
from modalities.devices import DEVICE_TYPES, validate_device

HEAVY = ("torch", "transformers", "whisper", "open_clip", "onnxruntime")
LIGHT_MODULES = (
    "modalities.llm.config",
    "modalities.llm.params",
    "modalities.audio.config",
    "modalities.audio.decode",
    "modalities.vision.config",
    "modalities.vision.decode",
    "modalities.errors",
    "modalities.paths",
    "modalities.devices",
    "modalities.llm",
    "modalities.audio",
    "modalities.vision",
    "modalities.speech",
    "modalities.speech.espeak",
)


def heavy_modules_after(code: str) -> list[str]:
    """Which HEAVY modules a fresh interpreter has loaded after running `code`."""
    check = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    return [m for m in result.stdout.strip().split(",") if m]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_config_modules_import_no_model_libraries(module: str) -> None:
    assert heavy_modules_after(f"import {module}") == []


def test_packages_export_lazily() -> None:
    code = "import modalities.llm, modalities.audio, modalities.vision, modalities.speech\n"
    assert heavy_modules_after(code) == []
    assert "torch" in heavy_modules_after(code + "modalities.llm.LLMRuntime")


PACKAGES = ["modalities.llm", "modalities.llm.engine", "modalities.llm.quant"]
PACKAGES += ["modalities.audio", "modalities.vision", "modalities.speech"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute"):
        _ = module.no_such_name


def test_configs_validate_without_model_libraries() -> None:
    code = (
        "from modalities.llm.config import LLMConfig\n"
        "from modalities.llm.params import SamplingParams\n"
        "from modalities.audio.config import WhisperConfig\n"
        "from modalities.vision.config import ClipConfig\n"
        "LLMConfig(device='cuda:1', quantization='int8'); SamplingParams(seed=1, stop='x')\n"
        "WhisperConfig(model='small', language='German'); ClipConfig(device='mps')\n"
    )
    assert heavy_modules_after(code) == []


# (No "gpu" among them: the suite's conftest skips any test whose keywords include it.)
DEVICE_STRINGS = ["cpu", "cuda", "cuda:0", "cuda:12", "mps", "xpu:1", "meta", "CUDA", "cuda:01", "cuda:-1", "cuda:"]
DEVICE_STRINGS += [" cpu", "nvidia", "auto", "cuda:1:2"]


@pytest.mark.parametrize("value", DEVICE_STRINGS)
def test_device_syntax_agrees_with_torch(value: str) -> None:
    try:
        torch.device(value)
        torch_accepts = True
    except RuntimeError:
        torch_accepts = False
    try:
        validate_device(value)
        we_accept = True
    except ValueError:
        we_accept = False
    assert we_accept == torch_accepts


def test_every_device_type_is_one_torch_knows() -> None:
    for device_type in DEVICE_TYPES:
        assert torch.device(device_type).type == device_type


def test_whisper_tables_match_whisper() -> None:
    assert list(available_models()) == whisper.available_models()
    for code, name in whisper.tokenizer.LANGUAGES.items():
        assert normalize_language(code) == code and normalize_language(name.title()) == code
    for name, code in whisper.tokenizer.TO_LANGUAGE_CODE.items():
        assert normalize_language(name) == code
    with pytest.raises(ValueError, match="unknown language"):
        normalize_language("klingon")
