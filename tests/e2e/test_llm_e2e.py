"""The packaged SmolLM2-135M-Instruct, prepared from its GGUF and loaded for real."""

from __future__ import annotations

import time

import pytest

from modalities.llm import LLMConfig, LLMRuntime, SamplingParams
from modalities.llm.weights import SIDECAR, SMOLLM2_CHAT_TEMPLATE, prepare_llm, verify_llm_dir

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = SamplingParams(temperature=0.0, max_tokens=48)
ALREADY_PREPARED_SECONDS = 1.0


@pytest.fixture(scope="module")
def model_dir():
    return prepare_llm()


@pytest.fixture(scope="module")
def fp32(model_dir) -> LLMRuntime:
    return LLMRuntime.from_config(LLMConfig(model=str(model_dir)))


def test_prepare_is_idempotent_and_hashed(model_dir):
    start = time.perf_counter()
    again = prepare_llm()
    assert again == model_dir
    assert time.perf_counter() - start < ALREADY_PREPARED_SECONDS
    assert (model_dir / SIDECAR).is_file()
    assert verify_llm_dir(model_dir)


def test_packaged_template_is_smollm2_chatml(fp32):
    assert fp32.tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE
    text = fp32.tokenizer.decode(fp32.chat_template(QUESTION))
    assert text.endswith("<|im_start|>assistant\n")


def test_capital_of_france(fp32):
    completion = fp32.generate(input_ids=fp32.chat_template(QUESTION), params=GREEDY)
    assert "Paris" in completion.text
    assert completion.finish_reason in ("stop", "length")


def test_streaming_concatenation_equals_generate(fp32):
    ids = fp32.chat_template([{"role": "user", "content": "Write one sentence about the sea."}])
    events = list(fp32.stream(input_ids=ids, params=GREEDY))
    completion = fp32.generate(input_ids=ids, params=GREEDY)
    assert "".join(e.text for e in events) == completion.text
    assert [e.token_id for e in events] == completion.token_ids
    assert completion.text.strip()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_is_smaller_and_still_answers(model_dir, fp32, mode, record_property):
    quantized = LLMRuntime.from_config(LLMConfig(model=str(model_dir), quantization=mode))
    ratio = quantized.weight_bytes() / fp32.weight_bytes()
    record_property(f"{mode}_over_fp32_weight_bytes", round(ratio, 3))
    print(f"{mode}: {quantized.weight_bytes() / 1e6:.0f} MB vs fp32 {fp32.weight_bytes() / 1e6:.0f} MB ({ratio:.2f}x)")
    assert ratio < 1.0
    completion = quantized.generate(input_ids=quantized.chat_template(QUESTION), params=GREEDY)
    assert "Paris" in completion.text


def test_w8a8_keeps_the_packaged_embedding_exactly_and_answers(model_dir, fp32):
    """The GGUF stores SmolLM2's embedding as Q8_0 (int8 in blocks of 32): w8a8's int8-block table
    must give back the float32 table bit for bit, and the int8 model must still answer."""
    import torch

    w8a8 = LLMRuntime.from_config(LLMConfig(model=str(model_dir), quantization="w8a8"))
    table = w8a8.model.get_input_embeddings()
    assert torch.equal(table.dequantized(), fp32.model.get_input_embeddings().weight)
    assert w8a8.weight_bytes() < 0.35 * fp32.weight_bytes()
    assert len(w8a8.quantization.smoothed) == 6 * fp32.model.config.num_hidden_layers
    completion = w8a8.generate(input_ids=w8a8.chat_template(QUESTION), params=GREEDY)
    assert "Paris" in completion.text


def test_prefix_cache_hits_give_the_answers_a_full_prefill_gives(fp32):
    """Greedy answers with the system prompt (and a repeated question) taken from the prefix cache
    are the answers of an engine that prefills everything."""
    from modalities.llm.engine import BatchedEngine

    uncached = LLMRuntime(fp32.model, fp32.tokenizer, decode_loop=BatchedEngine(fp32.model, prefix_cache_bytes=0))
    questions = ["Where is my parcel?", "How do I return a pair of shoes?", "Where is my parcel?"]
    params = SamplingParams(temperature=0.0, max_tokens=24)
    before = fp32.engine_stats().prefix_hit_tokens
    for question in questions:
        ids = fp32.chat_template([{"role": "user", "content": question}])
        assert fp32.generate(input_ids=ids, params=params).token_ids == uncached.generate(input_ids=ids, params=params).token_ids
    assert fp32.engine_stats().prefix_hit_tokens - before >= 2 * 24  # at least the system prompt, twice
    assert uncached.engine_stats().prefix_hit_tokens == 0
    uncached.decode_loop.close()


# --- the ONNX Runtime engine (the CPU default in deploy/local.yaml) --------------------------------

AGREEMENT_QUESTIONS = ["Where is my parcel?", "How do I return a pair of shoes?", "Write one sentence about the sea."]
MIN_ONNX_AGREEMENT = 0.9  # the bench's 8-prompt figure is the one held to 95 %; three prompts vary more


@pytest.fixture(scope="module")
def onnx_runtime(model_dir) -> LLMRuntime:
    runtime = LLMRuntime.from_config(LLMConfig(model=str(model_dir), engine="onnx", quantization="int4"))
    yield runtime
    runtime.decode_loop.close()


def test_onnx_export_is_prepared_idempotent_and_hashed():
    from modalities.llm.onnx_export import packaged_onnx_dir, prepare_onnx_llm, verify_onnx_dir

    start = time.perf_counter()
    path = prepare_onnx_llm()
    assert time.perf_counter() - start < ALREADY_PREPARED_SECONDS
    assert path == packaged_onnx_dir() and verify_onnx_dir(path)


def test_onnx_engine_answers_and_streams_what_it_generates(onnx_runtime):
    # Not QUESTION: fp32's first answer token to it is a near-tie ("The" 25.33 vs "L" 25.24), which
    # int8 activations can tip either way; asked like this, the answer is clear.
    question = [{"role": "user", "content": "Name the capital of France."}]
    completion = onnx_runtime.generate(input_ids=onnx_runtime.chat_template(question), params=GREEDY)
    assert "Paris" in completion.text
    ids = onnx_runtime.chat_template([{"role": "user", "content": "Write one sentence about the sea."}])
    events = list(onnx_runtime.stream(input_ids=ids, params=GREEDY))
    again = onnx_runtime.generate(input_ids=ids, params=GREEDY)
    assert [e.token_id for e in events] == again.token_ids  # the prefix cache's second run agrees


def test_onnx_engine_follows_fp32_greedy_answers(fp32, onnx_runtime):
    """Teacher-forced: fed fp32's greedy answer, the int4 ONNX model's argmax at each position is
    fp32's token at least 90 % of the time (the torch int4 path: 98 % on the bench's prompts)."""
    forward = onnx_runtime.decode_loop.forward
    agree = total = 0
    for question in AGREEMENT_QUESTIONS:
        ids = fp32.chat_template([{"role": "user", "content": question}])
        answer = fp32.generate(input_ids=ids, params=SamplingParams(temperature=0.0, max_tokens=32)).token_ids
        logits = forward.score(onnx_runtime.embed(ids + answer[:-1]).unsqueeze(0))[len(ids) - 1 :]
        agree += sum(int(p) == r for p, r in zip(logits.argmax(dim=-1).tolist(), answer))
        total += len(answer)
    assert agree / total >= MIN_ONNX_AGREEMENT, f"{agree}/{total}"


def test_onnx_engine_keeps_only_the_embedding_in_torch(fp32, onnx_runtime):
    """The ONNX replica holds the export (int4 body, int8 head) and an int8-block embedding (exactly the packaged
    Q8_0 table), not the 538 MB float model."""
    import torch

    table = onnx_runtime.model.get_input_embeddings()
    assert torch.equal(table.dequantized(), fp32.model.get_input_embeddings().weight)
    assert onnx_runtime.weight_bytes() < 0.3 * fp32.weight_bytes()  # int4 body, int8 head and embedding: 0.27x
