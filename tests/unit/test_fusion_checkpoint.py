"""Projector checkpoints: metadata round trip, weights round trip, and the mismatch errors."""

from __future__ import annotations

import json

import pytest
import torch

from fusion.checkpoint import (
    METADATA_FILE,
    ModelIdentity,
    ProjectorMismatchError,
    llm_identity,
    load_projector,
    read_metadata,
    save_projector,
    update_metadata,
)
from fusion.projectors import build_projector

ENCODER = ModelIdentity(name="whisper-tiny-test", sha256="a" * 64)
LLM = ModelIdentity(name="tiny-llama-test", sha256="b" * 64)


def _saved(tmp_path, kind="stack4_swiglu", in_dim=16, out_dim=24, dtype="float32"):
    torch.manual_seed(0)
    module = build_projector(kind, in_dim, out_dim)
    path = save_projector(
        tmp_path / "proj",
        module,
        kind=kind,
        encoder=ENCODER,
        llm=LLM,
        dtype=dtype,
        training={"command": "chorus train-projector --steps 3", "steps": 3},
        data={"recipe": "unit"},
    )
    return module, path


def test_metadata_and_weights_round_trip(tmp_path):
    module, path = _saved(tmp_path)
    loaded, meta = load_projector(path, llm_hidden_size=24, llm=LLM, encoder=ENCODER)
    assert meta["projector"] == {"kind": "stack4_swiglu", "in_dim": 16, "out_dim": 24, "hidden_dim": 48}
    assert meta["encoder"] == {"name": ENCODER.name, "sha256": ENCODER.sha256}
    assert meta["llm"]["sha256"] == LLM.sha256
    assert meta["training"]["command"].startswith("chorus train-projector")
    assert meta["data"] == {"recipe": "unit"}
    frames = torch.randn(1, 10, 16)
    torch.testing.assert_close(loaded(frames), module(frames))
    assert loaded.stack == 4 and not loaded.training


def test_fp16_storage_and_safetensors_path(tmp_path):
    module, path = _saved(tmp_path, kind="mlp2x_gelu", dtype="float16")
    loaded, meta = load_projector(path / "projector.safetensors")
    assert meta["dtype"] == "float16"
    assert next(loaded.parameters()).dtype == torch.float32  # loads as float32 by default
    frames = torch.randn(1, 5, 16)
    torch.testing.assert_close(loaded(frames), module(frames), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("role", ["llm", "encoder"])
def test_mismatched_model_is_refused_with_clear_message(tmp_path, role):
    _, path = _saved(tmp_path)
    other = ModelIdentity(name="some-other-model", sha256="c" * 64)
    kwargs = {"llm": LLM, "encoder": ENCODER, role: other}
    with pytest.raises(ProjectorMismatchError) as err:
        load_projector(path, **kwargs)
    message = str(err.value)
    assert "some-other-model" in message and "train-projector" in message
    assert (LLM if role == "llm" else ENCODER).name in message


def test_same_name_different_weights_is_a_mismatch(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(ProjectorMismatchError):
        load_projector(path, llm=ModelIdentity(name=LLM.name, sha256="d" * 64))


def test_hidden_size_mismatch(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(ProjectorMismatchError, match="hidden size is 32"):
        load_projector(path, llm_hidden_size=32)


def test_update_metadata_and_bad_files(tmp_path):
    _, path = _saved(tmp_path)
    update_metadata(path, eval={"eval_voices": {"embed": {"wer": 0.1}}})
    assert read_metadata(path)["eval"]["eval_voices"]["embed"]["wer"] == 0.1
    (path / METADATA_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a chorus-projector"):
        read_metadata(path)
    with pytest.raises(FileNotFoundError):
        load_projector(tmp_path / "nowhere")


def test_llm_identity_hashes_a_local_directory(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    ident = llm_identity(str(tmp_path))
    assert ident.name == tmp_path.name and len(ident.sha256) == 64
    assert llm_identity("some-org/some-hub-model") == ModelIdentity(name="some-org/some-hub-model")
