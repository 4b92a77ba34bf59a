"""The ONNX Runtime engine on a tiny random Llama exported by the project's own exporter.

A float32 export must give the torch forward's logits (the same weights, no quantization) for every
shape the scheduler uses: packed ragged prompts, a prompt continuing a cached prefix, ragged batched
decode steps in the shared K/V buffers. Through the scheduler, it must give the eager loop's greedy
tokens whatever joins or leaves. The int4 export goes through `LLMRuntime.from_config` as
`engine: onnx` does in the service.
"""

from __future__ import annotations

import onnx
import pytest
import torch

from modalities.llm import LLMConfig, LLMRuntime, SamplingParams
from modalities.llm.embedding_model import EmbeddingModel
from modalities.llm.engine.forward import LlamaForward
from modalities.llm.engine.onnx import OnnxForward
from modalities.llm.engine.slots import SlotCache
from modalities.llm.onnx_export import LOGITS_INDEX, SIDECAR, export_onnx, is_complete, verify_onnx_dir
from tests.unit.test_llm import VOCAB_SIZE, build_tokenizer
from tests.unit.test_llm_engine import GREEDY, NEW_TOKENS, NO_EOS, PAUSE_AT_STEP, Pacer, eager_tokens, lively_model

LOGIT_ATOL = 2e-3  # float32 both sides; the kernels sum in different orders


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return lively_model(tokenizer)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer):
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory, model_dir):
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    export_onnx(model_dir, out, "fp32")
    return out


@pytest.fixture(scope="module")
def forwards(model, fp32_dir):
    return LlamaForward(model), OnnxForward(fp32_dir, model.get_input_embeddings(), threads=1)


@pytest.fixture(scope="module")
def prompts(model) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        return [model.get_input_embeddings()(torch.randint(0, VOCAB_SIZE, (1, n), generator=generator)) for n in (6, 19, 3)]


def new_cache(forward, rows: int = 4, capacity: int = 64) -> SlotCache:
    cache = SlotCache(
        forward.num_layers, forward.num_kv_heads, forward.head_dim, max_rows=8, max_length=256,
        dtype=torch.float32, device=torch.device("cpu"), min_capacity=capacity,
    )  # fmt: skip
    cache.reserve(rows, capacity)
    return cache


def test_export_is_complete_hash_pinned_and_has_the_logits_index(fp32_dir):
    assert is_complete(fp32_dir) and verify_onnx_dir(fp32_dir)
    graph = onnx.load(str(fp32_dir / "model.onnx"), load_external_data=False).graph
    assert LOGITS_INDEX in {i.name for i in graph.input}
    assert "inputs_embeds" in {i.name for i in graph.input} and "input_ids" not in {i.name for i in graph.input}
    logits = next(o for o in graph.output if o.name == "logits")
    assert len(logits.type.tensor_type.shape.dim) == 2  # [K, V]: only the positions asked for


def test_a_changed_weight_file_fails_verification(tmp_path, fp32_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(fp32_dir, copy)
    data = copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert is_complete(copy) and not verify_onnx_dir(copy)
    (copy / SIDECAR).unlink()
    assert not is_complete(copy)


def test_prefill_and_decode_match_the_torch_forward(forwards, prompts, model):
    """Packed ragged prompts, a continuation after a cached prefix, then two ragged decode steps."""
    results = []
    embedding = model.get_input_embeddings()
    extra = embedding(torch.tensor([[5, 9, 11, 40]])).detach()
    with torch.inference_mode():
        for forward in forwards:
            cache = new_cache(forward)
            packed = forward.prefill(prompts, cache, 0)
            continued = forward.prefill([extra], cache, 0, [prompts[0].shape[1]])
            lengths = torch.tensor([prompts[0].shape[1] + 4, prompts[1].shape[1], prompts[2].shape[1]])
            tokens = torch.tensor([7, 8, 9])
            first = forward.decode(tokens, lengths, int(lengths.max()) + 1, cache).clone()
            second = forward.decode(tokens + 1, lengths + 1, int(lengths.max()) + 2, cache).clone()
            results.append((packed, continued, first, second))
    for ours, theirs in zip(*results):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(theirs, ours, atol=LOGIT_ATOL, rtol=0)


def test_rows_after_the_first_prefill_into_their_own_rows(forwards, prompts):
    """A pack starting at row 2 writes rows 2.. only: rows 0-1 (other requests' K/V) are untouched."""
    _, onnx_forward = forwards
    cache = new_cache(onnx_forward)
    with torch.inference_mode():
        for keys in cache.keys:
            keys[:2].fill_(0.5)
        onnx_forward.prefill(prompts[:2], cache, 2)
    assert all(bool((keys[:2] == 0.5).all()) for keys in cache.keys)
    assert all(bool(keys[2, :, : prompts[0].shape[1]].abs().sum() > 0) for keys in cache.keys)


def test_engine_on_onnx_gives_the_eager_tokens_with_staggered_joins(model, forwards, prompts, make_engine):
    expected = eager_tokens(model, prompts)
    _, onnx_forward = forwards
    pacer = Pacer(1, PAUSE_AT_STEP)
    engine = make_engine(onnx_forward, max_slots=4, min_capacity=8, on_step=pacer)
    streams = [engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)]
    pacer.wait_paused(1)
    streams.append(engine.run(prompts[1], GREEDY, NEW_TOKENS, NO_EOS))
    pacer.resume(1)
    pacer.wait_paused(PAUSE_AT_STEP)
    streams.append(engine.run(prompts[2], GREEDY, NEW_TOKENS, NO_EOS))
    pacer.resume(PAUSE_AT_STEP)
    assert [list(stream) for stream in streams] == expected
    assert max(s.active for s in pacer.history) == 3


def test_engine_on_onnx_reuses_cached_prefixes_with_the_same_tokens(model, forwards, prompts, make_engine):
    _, onnx_forward = forwards
    longer = torch.cat([prompts[1], prompts[0]], dim=1)  # shares prompts[1]'s 16-token prefix blocks
    expected = eager_tokens(model, [prompts[1], longer])
    engine = make_engine(onnx_forward, prefix_cache_bytes=1 << 20)
    assert list(engine.run(prompts[1], GREEDY, NEW_TOKENS, NO_EOS)) == expected[0]
    assert list(engine.run(longer, GREEDY, NEW_TOKENS, NO_EOS)) == expected[1]
    assert engine.stats().prefix_hit_tokens >= 16


def test_cancelled_stream_on_onnx_frees_its_row_for_the_next(model, forwards, prompts, make_engine):
    _, onnx_forward = forwards
    pacer = Pacer(2)
    engine = make_engine(onnx_forward, max_slots=1, on_step=pacer)
    first = engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)
    waiting = engine.run(prompts[2], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(2)
    first.cancel()
    pacer.resume(2)
    assert list(waiting) == eager_tokens(model, [prompts[2]])[0]
    assert engine.stats().cancelled == 1


def test_runtime_with_the_onnx_engine_exports_int4_and_keeps_only_the_embedding(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CHORUS_CACHE_DIR", str(tmp_path / "cache"))
    runtime = LLMRuntime.from_config(LLMConfig(model=str(model_dir), engine="onnx", quantization="int4", threads=1))
    try:
        assert isinstance(runtime.model, EmbeddingModel)
        assert not any(name.startswith("layers") for name, _ in runtime.model.named_parameters())
        completion = runtime.generate(input_ids=[3, 4, 5, 6], params=SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        assert completion.completion_tokens == 8
        exported = list((tmp_path / "cache" / "models").glob("onnx-int4-*"))
        assert len(exported) == 1 and verify_onnx_dir(exported[0])
        assert runtime.weight_bytes() > (exported[0] / "model.onnx.data").stat().st_size
    finally:
        runtime.decode_loop.close()


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"quantization": "none"}, "quantization"), ({"device": "cuda"}, "device"), ({"dtype": "bfloat16"}, "dtype")],
)
def test_onnx_engine_refuses_settings_it_would_ignore(changes, named):
    with pytest.raises(ValueError, match=f"llm.engine 'onnx' does not take {named}"):
        LLMConfig(engine="onnx", **{"quantization": "int4", **changes})


# --- int4 blocks with exact offsets ----------------------------------------------------------------


def q4_1_grid(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Weights as GGUF Q4_1 stores them: per block of 32, d * q + m with q in 0..15 (both ends used)."""
    rows, width = weight.shape
    codes = torch.randint(0, 16, (rows, width // 32, 32), generator=generator)
    codes[..., 0], codes[..., 1] = 0, 15
    scale = torch.rand(rows, width // 32, 1, generator=generator) * 0.05 + 0.005
    low = (torch.rand(rows, width // 32, 1, generator=generator) - 0.7) * 0.4
    return (codes * scale + low).view(rows, width)


def test_int4_blocks_reproduce_q4_1_weights_exactly():
    from modalities.llm.onnx_export import _int4_blocks, _int8_blocks

    generator = torch.Generator().manual_seed(5)
    weight = q4_1_grid(torch.empty(48, 96), generator).numpy()
    packed, scales, offsets = _int4_blocks(weight)
    codes = torch.stack([torch.from_numpy(packed & 0x0F), torch.from_numpy(packed >> 4)], dim=-1).view(48, 3, 32)
    rebuilt = (codes.float() - 8) * torch.from_numpy(scales)[..., None] + torch.from_numpy(offsets)[..., None]
    torch.testing.assert_close(rebuilt.view(48, 96), torch.from_numpy(weight), atol=1e-6, rtol=0)
    q8_codes = torch.randint(-127, 128, (10, 2, 32), generator=generator)
    q8_codes[..., 0] = 127  # Q8_0: each block's largest magnitude is 127 steps
    q8 = (q8_codes.float() * 0.01).view(10, 64).numpy()
    codes8, scales8 = _int8_blocks(q8)
    rebuilt8 = (torch.from_numpy(codes8).float() - 128) * torch.from_numpy(scales8)[..., None]
    torch.testing.assert_close(rebuilt8.view(10, 64), torch.from_numpy(q8), atol=1e-6, rtol=0)


def test_int4_export_of_q4_1_weights_follows_the_float_model(tmp_path_factory, tokenizer):
    """A model whose linears are Q4_1 blocks and whose embedding is Q8_0 (the packaged checkpoint's
    layout) keeps its float model's logits through the int4 export: only the kernel's int8
    activations differ. (The builder's own symmetric int4 re-rounds every weight.)"""
    model = lively_model(tokenizer)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "embed_tokens" not in name:
                parameter.copy_(q4_1_grid(parameter, generator) * parameter.abs().mean() / 0.1)
        table = model.get_input_embeddings().weight
        step = (table.abs().view(table.shape[0], -1, 32).amax(-1, keepdim=True) / 127).clamp_min(1e-6)  # a padding row is 0
        table.copy_(((table.view(table.shape[0], -1, 32) / step).round() * step).view_as(table))
    source = tmp_path_factory.mktemp("q4_1-llama")
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path_factory.mktemp("onnx") / "int4"
    export_onnx(source, out, "int4")
    nodes = onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node
    weights = [n.input[1] for n in nodes if n.op_type == "MatMulNBits"]
    assert sum("gate_up_proj" in w for w in weights) == 2 and not any(".gate_proj." in w for w in weights)
    assert sum(n.op_type == "MatMul" for n in nodes) == 2 * 4  # one offset term per projection, per layer
    forward = OnnxForward(out, model.get_input_embeddings(), threads=1)
    ids = torch.randint(0, VOCAB_SIZE, (1, 40), generator=generator)
    with torch.inference_mode():
        expected = model(input_ids=ids).logits[0]
        got = forward.score(model.get_input_embeddings()(ids))
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95
    assert torch.nn.functional.cosine_similarity(got, expected, dim=-1).min() > 0.999
