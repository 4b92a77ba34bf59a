"""W8A8 (FBGEMM int8 x per-token int8): accuracy, batch invariance, the exact embedding, SmoothQuant's
folding and the head's float32 top, on tiny random models."""

from __future__ import annotations

import pytest
import torch

from modalities.llm import LLMRuntime, SamplingParams
from modalities.llm.quant import UnsupportedQuantization, fast_linear, fast_linears, quantize_model, weight_bytes
from modalities.llm.quant import w8a8 as llm_w8a8
from modalities.llm.quant.w8a8 import Int8BlockEmbedding, Int8Head, Int8Linear, calibration_ids
from tests.unit.test_llm import HIDDEN, VOCAB_SIZE, build_model, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("residual", [True, False])
def test_int8_linear_tracks_float_and_a_row_does_not_depend_on_its_batch(residual):
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 64) * 0.05, torch.randn(48) * 0.01
    layer = Int8Linear(weight, bias, residual=residual)
    x = torch.randn(5, 64)
    x[3] *= 1000.0  # a row three orders of magnitude larger than its neighbours
    with torch.inference_mode():
        batched = layer(x)
        alone = torch.cat([layer(row[None]) for row in x])
    assert torch.equal(batched, alone)  # per-token ranges: the loud row doesn't coarsen the others
    # Against float with the layer's own int8 weights, the error is the activations' alone.
    quantized = llm_w8a8._per_row_int8(weight)
    expected = torch.nn.functional.linear(x, quantized.dequantize(), bias)
    relative = ((batched - expected).norm(dim=-1) / expected.norm(dim=-1)).max()
    if residual:
        assert relative < 2e-4, relative  # two int8 parts: ~16-bit activations
    else:
        assert 1e-3 < relative < 2e-2, relative  # one part: 8 bits
    assert batched.shape == (5, 48) and layer(torch.zeros(2, 3, 64)).eq(bias).all()  # zero rows: just the bias


def test_layers_sharing_an_input_split_it_once_with_the_same_result():
    torch.manual_seed(1)
    layers = [Int8Linear(torch.randn(n, 64) * 0.05) for n in (64, 32, 32)]
    x = torch.randn(2, 3, 64)
    with torch.inference_mode():
        shared = llm_w8a8.shared_input(layers)(x)
        separate = [layer(x) for layer in layers]
    assert all(torch.equal(a, b) for a, b in zip(shared, separate)) and shared[1].shape == (2, 3, 32)
    with pytest.raises(ValueError, match="residual"):
        llm_w8a8.shared_input([layers[0], Int8Linear(torch.randn(8, 64), residual=False)])


def test_a_fused_group_equals_its_layers_and_computes_once_for_calls_on_one_input():
    torch.manual_seed(2)
    linears = [torch.nn.Linear(64, n, bias=n == 32) for n in (64, 32, 16)]
    group = llm_w8a8.Int8Group(linears)
    parts = [llm_w8a8.Int8Part(group, i) for i in range(3)]
    x = torch.randn(2, 3, 64)
    calls = []
    original = group.linear.forward
    group.linear.forward = lambda t: calls.append(t) or original(t)
    with torch.inference_mode():
        alone = [Int8Linear(m.weight, m.bias)(x) for m in linears]
        grouped = group(x)
        one_by_one = [part(x) for part in parts]  # how transformers' own forward calls q, k and v
        released = group._held is None  # every part took its output: nothing kept alive
        again = parts[1](x.clone())  # another input tensor: computed afresh
    assert all(torch.equal(a, b) for a, b in zip(alone, grouped))  # stacking changes no integer or scale
    assert all(torch.equal(a, b) for a, b in zip(alone, one_by_one)) and torch.equal(again, alone[1])
    assert len(calls) == 3 and released  # the group, the three parts once, the fresh input
    assert [p.out_features for p in parts] == [64, 32, 16] and grouped[1].shape == (2, 3, 32)
    assert fast_linears(parts) == group.forward and fast_linears(parts[:2]) != group.forward


def test_block_embedding_reproduces_a_q8_0_table_exactly():
    """A table that already is int8 blocks times a half-precision scale (GGUF Q8_0) comes back bit for bit."""
    torch.manual_seed(0)
    values = torch.randint(-127, 128, (40, 64, 32), dtype=torch.int8)
    values[:, :, 0] = 127 * torch.where(torch.rand(40, 64) < 0.5, 1, -1)  # Q8_0: the absmax is ±127 steps
    scales = (torch.rand(40, 64, 1) * 0.01 + 1e-4).half().float()
    table = (values.float() * scales).view(40, 2048)
    embedding = Int8BlockEmbedding(table)
    assert torch.equal(embedding.dequantized(), table)
    ids = torch.tensor([[3, 0, 39], [7, 7, 1]])
    assert torch.equal(embedding(ids), table[ids])
    assert embedding.qweight.dtype == torch.int8 and embedding.qweight.numel() == table.numel()


def test_head_top_logits_are_float32_and_the_greedy_token_is_float32s():
    torch.manual_seed(0)
    table = torch.randn(VOCAB_SIZE, HIDDEN) * 0.05
    head = Int8Head(Int8BlockEmbedding(table))
    exact_table = head.table.dequantized()
    x = torch.randn(16, HIDDEN) * 3
    x[0] = exact_table[5] + exact_table[9]  # entries 5 and 9 tie up to rounding: a near-tie at the top
    with torch.inference_mode():
        logits = head(x)
    expected = x @ exact_table.T
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    top = expected.topk(8, dim=-1).indices
    assert torch.allclose(logits.gather(1, top), expected.gather(1, top), rtol=1e-5, atol=1e-5)
    assert (logits - expected).abs().max() > 1e-4  # the rest stays int8 (else the test proves nothing)


def test_smoothing_keeps_the_float_model_and_moves_the_range(tokenizer):
    model = build_model(tokenizer)
    ids = torch.tensor([calibration_ids(tokenizer)[0]])
    with torch.inference_mode():
        before = model(ids).logits
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    norm = model.model.layers[0].input_layernorm.weight.clone()
    smoothed = llm_w8a8.smooth_llama_layers(model, llm_w8a8.input_ranges(model, linears, calibration_ids(tokenizer)))
    assert len(smoothed) == 6 * len(model.model.layers) and "model.layers.1.mlp.down_proj" in smoothed
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, norm)
    with torch.inference_mode():
        after = model(ids).logits
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)


def test_w8a8_runtime_generates_and_stores_int8(tokenizer):
    model = build_model(tokenizer)
    fp32_bytes = weight_bytes(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(build_model(tokenizer), "w8a8")
    report = quantize_model(model, "w8a8", calibration_ids(tokenizer))
    assert sorted(report.quantized) == sorted(linears) and not report.skipped
    layer = model.model.layers[0]
    assert isinstance(layer.mlp.down_proj, Int8Linear) and not layer.mlp.down_proj.residual
    assert layer.self_attn.q_proj.residual and layer.mlp.up_proj.residual and not layer.self_attn.o_proj.residual
    assert isinstance(model.lm_head, Int8Head) and model.lm_head.table is model.get_input_embeddings()
    attention = layer.self_attn
    assert isinstance(attention.q_proj, llm_w8a8.Int8Part) and attention.k_proj.group is attention.q_proj.group
    assert fast_linears([attention.q_proj, attention.k_proj, attention.v_proj]) == attention.q_proj.group.forward
    assert fast_linear(attention.o_proj) == attention.o_proj.forward
    runtime = LLMRuntime(model, tokenizer, quantization=report)
    assert runtime.dtype == torch.float32 and runtime.device.type == "cpu"
    ids = runtime.chat_template([{"role": "user", "content": "Where is my parcel?"}])
    completion = runtime.generate(input_ids=ids, params=SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert completion.completion_tokens == 8
    # int8 linears and embedding: a quarter of float32, plus per-channel and per-block scales (which
    # weigh more at this tiny width: 0.37x here, 0.32x for SmolLM2).
    assert weight_bytes(model) < 0.4 * fp32_bytes


def test_w8a8_is_refused_off_float32(tokenizer):
    model = build_model(tokenizer).to(torch.bfloat16)
    with pytest.raises(UnsupportedQuantization, match="float32"):
        quantize_model(model, "w8a8", calibration_ids(tokenizer))
