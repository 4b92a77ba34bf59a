"""LLM runtime on a tiny random Llama with a tiny byte-level BPE tokenizer: no weights, no network.

The tokenizer is trained in-test (byte-level BPE, so any text round-trips and multi-byte characters
span several tokens) and carries SmolLM2's ChatML template. Random weights make the text gibberish,
but everything here is about mechanics: seeds, greedy determinism, stop strings, limits, the
embeds path, quantization, parameter validation.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from modalities.errors import InputError, MediaError
from modalities.llm import LLMConfig, LLMRuntime, SamplingParams
from modalities.llm.detokenize import REPLACEMENT_CHAR, IncrementalDetokenizer, StopStringFilter
from modalities.llm.quant import PackedBfloat16Head, UnsupportedQuantization, fast_linear, quantize_model, weight_bytes
from modalities.llm.quant import w8a8 as llm_w8a8
from modalities.llm.quant.fast import GEMV_PRONE_MIN_BYTES, _gemv_prone
from modalities.llm.quant.int4 import REFINE_ABSOLUTE_BAND, REFINE_RELATIVE_BAND
from modalities.llm.weights import SMOLLM2_CHAT_TEMPLATE

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a tiny tokenizer for tests.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Stop strings must never leak into the streamed output.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 320  # a multiple of 16, so the tied lm_head fits the CPU int4 kernel too
HIDDEN = 64
MAX_POSITIONS = 256
MODEL_SEED = 0
NEW_TOKENS = 16
MIN_INT4_LOGIT_COSINE = 0.9
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on CORPUS, with ChatML specials and SmolLM2's chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    fast.chat_template = SMOLLM2_CHAT_TEMPLATE
    return fast


def build_model(tokenizer, hidden: int = HIDDEN, intermediate: int = 2 * HIDDEN) -> LlamaForCausalLM:
    torch.manual_seed(MODEL_SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def runtime(tokenizer) -> LLMRuntime:
    return LLMRuntime(build_model(tokenizer), tokenizer)


@pytest.fixture(scope="module")
def prompt_ids(runtime) -> list[int]:
    return runtime.chat_template(PROMPT)


def sampled(runtime: LLMRuntime, ids, **params) -> list[int]:
    return runtime.generate(input_ids=ids, params=SamplingParams(**params)).token_ids


# --- prompt helpers ----------------------------------------------------------------------------


def test_chat_template_renders_chatml(runtime, tokenizer, prompt_ids):
    text = tokenizer.decode(prompt_ids)
    assert prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_embed_keeps_leading_shape(runtime, prompt_ids):
    flat = runtime.embed(prompt_ids)
    batched = runtime.embed(torch.tensor([prompt_ids]))
    assert flat.shape == (len(prompt_ids), HIDDEN)
    assert batched.shape == (1, len(prompt_ids), HIDDEN)
    assert torch.equal(flat, batched[0])


# --- sampling ----------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_ignores_seed(runtime, prompt_ids):
    first = sampled(runtime, prompt_ids, temperature=0, max_tokens=NEW_TOKENS, seed=1)
    second = sampled(runtime, prompt_ids, temperature=0, max_tokens=NEW_TOKENS, seed=2)
    assert first == second
    assert len(first) == NEW_TOKENS


def test_greedy_matches_hf_generate(runtime, prompt_ids):
    """Our own prefill + KV-cache loop picks the same tokens as transformers' reference loop."""
    ours = sampled(runtime, prompt_ids, temperature=0, max_tokens=NEW_TOKENS)
    with torch.inference_mode():
        reference = runtime.model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None
        )
    assert ours == reference[0, len(prompt_ids) :].tolist()


def test_same_seed_same_tokens_different_seed_differs(runtime, prompt_ids):
    a = sampled(runtime, prompt_ids, temperature=1.0, seed=7, max_tokens=NEW_TOKENS)
    b = sampled(runtime, prompt_ids, temperature=1.0, seed=7, max_tokens=NEW_TOKENS)
    c = sampled(runtime, prompt_ids, temperature=1.0, seed=8, max_tokens=NEW_TOKENS)
    assert a == b
    assert a != c


def test_tiny_top_p_keeps_only_the_top_token(runtime, prompt_ids):
    greedy = sampled(runtime, prompt_ids, temperature=0, max_tokens=NEW_TOKENS)
    nucleus = sampled(runtime, prompt_ids, temperature=1.0, top_p=1e-6, seed=3, max_tokens=NEW_TOKENS)
    assert nucleus == greedy


def test_inputs_embeds_path_matches_input_ids_path(runtime, prompt_ids):
    embeds = runtime.embed(prompt_ids).unsqueeze(0)
    from_embeds = runtime.generate(embeds, params=SamplingParams(temperature=0, max_tokens=NEW_TOKENS))
    from_ids = runtime.generate(input_ids=prompt_ids, params=SamplingParams(temperature=0, max_tokens=NEW_TOKENS))
    assert from_embeds.token_ids == from_ids.token_ids
    assert from_embeds.text == from_ids.text


# --- finishing ---------------------------------------------------------------------------------


def test_max_tokens_finishes_with_length(runtime, prompt_ids):
    completion = runtime.generate(input_ids=prompt_ids, params=SamplingParams(temperature=0, max_tokens=5))
    assert completion.finish_reason == "length"
    assert completion.completion_tokens == len(completion.token_ids) == 5
    assert completion.prompt_tokens == len(prompt_ids)


def test_context_window_finishes_with_length(tokenizer, prompt_ids):
    room = 3
    runtime = LLMRuntime(build_model(tokenizer), tokenizer, max_context=len(prompt_ids) + room)
    completion = runtime.generate(input_ids=prompt_ids, params=SamplingParams(temperature=0, max_tokens=50))
    assert completion.finish_reason == "length"
    assert completion.completion_tokens == room


def test_prompt_filling_the_context_is_refused(tokenizer, prompt_ids):
    runtime = LLMRuntime(build_model(tokenizer), tokenizer, max_context=len(prompt_ids))
    with pytest.raises(InputError) as info:
        runtime.stream(input_ids=prompt_ids)
    assert info.value.param == "messages"
    assert info.value.code == "context_length_exceeded"


def test_eos_finishes_with_stop_and_adds_no_text(tokenizer, runtime, prompt_ids):
    first_greedy = sampled(runtime, prompt_ids, temperature=0, max_tokens=1)[0]
    model = build_model(tokenizer)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first_greedy]
    completion = LLMRuntime(model, tokenizer).generate(input_ids=prompt_ids, params=SamplingParams(temperature=0))
    assert completion.finish_reason == "stop"
    assert completion.token_ids == [first_greedy]
    assert completion.text == ""
    ignoring = LLMRuntime(model, tokenizer).generate(
        input_ids=prompt_ids, params=SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    )
    assert ignoring.finish_reason == "length"
    assert ignoring.token_ids[0] == first_greedy and len(ignoring.token_ids) == 4


def test_stop_string_truncates_and_never_leaks(runtime, prompt_ids):
    params = dict(temperature=1.0, seed=11, max_tokens=32)
    baseline = runtime.generate(input_ids=prompt_ids, params=SamplingParams(**params))
    assert baseline.finish_reason == "length", "seed/model changed: the baseline hit EOS"
    text = baseline.text
    # A stop string from the middle of the baseline, made of ordinary characters.
    start = next(i for i in range(len(text) // 3, len(text) - 3) if REPLACEMENT_CHAR not in text[i : i + 3])
    stop = text[start : start + 3]
    expected = text[: text.find(stop)]

    events = list(runtime.stream(input_ids=prompt_ids, params=SamplingParams(**params, stop=[stop])))
    streamed = "".join(e.text for e in events)
    assert streamed == expected
    assert stop not in streamed
    assert all(stop not in e.text for e in events)
    assert events[-1].finish_reason == "stop"
    assert all(e.finish_reason is None for e in events[:-1])
    assert [e.token_id for e in events] == baseline.token_ids[: len(events)]
    assert len(events) < len(baseline.token_ids)


def test_streaming_equals_non_streaming(runtime, prompt_ids):
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=NEW_TOKENS)
    events = list(runtime.stream(input_ids=prompt_ids, params=params))
    completion = runtime.generate(input_ids=prompt_ids, params=params)
    assert "".join(e.text for e in events) == completion.text
    assert [e.token_id for e in events] == completion.token_ids
    assert events[-1].completion_tokens == completion.completion_tokens


# --- text assembly -----------------------------------------------------------------------------


def test_incremental_detokenizer_releases_whole_characters(tokenizer):
    text = "café 😀 naïve — 東京"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 2, "multi-byte characters should span several byte-level tokens"
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]
    assert "".join(deltas) == text
    assert not any(REPLACEMENT_CHAR in d for d in deltas)
    assert "" in deltas  # some tokens were partial characters and released nothing yet


def test_stop_filter_holds_back_possible_prefixes():
    stops = StopStringFilter(["Hello", "##"])
    assert stops.push("say Hel") == "say "
    assert stops.push("p") == "Help"  # "Help" can no longer become "Hello"
    assert stops.push(" #") == " "
    assert stops.push("# tail") == ""
    assert stops.stopped
    assert stops.flush() == ""


def test_stop_filter_picks_the_earliest_stop_and_flushes_tail():
    stops = StopStringFilter(["bc", "ab"])
    assert stops.push("xabc") == "x"
    unfinished = StopStringFilter(["END"])
    assert unfinished.push("the EN") == "the "
    assert unfinished.flush() == "EN"


# --- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_params_raise_input_error(kwargs, param):
    with pytest.raises(InputError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param
    assert not isinstance(info.value, MediaError)  # a bad parameter, not bad media


def test_single_stop_string_is_normalised():
    assert SamplingParams(stop="END").stop == ("END",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")


def test_prompt_must_be_given_exactly_once(runtime, prompt_ids):
    with pytest.raises(ValueError, match="exactly one"):
        runtime.stream()
    with pytest.raises(ValueError, match=r"\[1, L, 64\]"):
        runtime.stream(torch.zeros(1, 3, HIDDEN + 1))


# --- quantization and memory -------------------------------------------------------------------


def test_weight_bytes_counts_tied_weights_once(tokenizer):
    model = build_model(tokenizer)
    unique_params = {id(p): p for p in model.parameters()}.values()
    expected = sum(p.numel() * 4 for p in unique_params) + sum(b.numel() * b.element_size() for b in model.buffers())
    assert weight_bytes(model) == expected


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_runtime_generates_and_is_smaller(tokenizer, prompt_ids, mode):
    model = build_model(tokenizer)
    fp32_bytes = weight_bytes(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    report = quantize_model(model, mode)
    assert sorted([*report.quantized, *report.skipped]) == sorted(linears)
    for name in report.quantized:  # torchao swaps in its tensor subclasses
        assert type(model.get_submodule(name).weight) is not torch.nn.Parameter
    runtime = LLMRuntime(model, tokenizer, quantization=report)
    logits = model(torch.tensor([prompt_ids])).logits
    assert logits.dtype == torch.float32  # int4's bfloat16 island casts back
    completion = runtime.generate(input_ids=prompt_ids, params=SamplingParams(temperature=0, max_tokens=8))
    assert completion.completion_tokens == 8
    assert runtime.weight_bytes() < fp32_bytes


def no_fbgemm(monkeypatch) -> None:
    """Pretend FBGEMM can't run here (as on CUDA): int4's tied head takes the bfloat16 route."""
    def unavailable(device, dtype):
        raise llm_w8a8.UnavailableW8A8("no FBGEMM in this test")

    monkeypatch.setattr(llm_w8a8, "check_available", unavailable)


@pytest.mark.parametrize(("mode", "fbgemm", "stored"), [("int8", True, torch.float32), ("int4", False, torch.bfloat16)])
def test_tied_head_stays_tied_and_unquantized(tokenizer, monkeypatch, mode, fbgemm, stored):
    """int8 keeps the tied head in float; int4 without FBGEMM stores it in bfloat16; both answer in float32."""
    if not fbgemm:
        no_fbgemm(monkeypatch)
    model = build_model(tokenizer)
    report = quantize_model(model, mode)
    assert list(report.skipped) == ["lm_head"] and "lm_head" not in report.quantized
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.model.embed_tokens.weight.dtype == stored
    assert model.model.embed_tokens(torch.tensor([1, 2])).dtype == torch.float32
    assert model.lm_head(torch.zeros(1, HIDDEN)).dtype == torch.float32
    assert LLMRuntime(model, tokenizer, quantization=report).dtype == torch.float32
    assert "model.layers.0.mlp.down_proj" in report.quantized


def test_int4_tied_head_is_an_int8_table_on_cpu(tokenizer):
    """With FBGEMM (CPU, float32) int4's tied embedding/head becomes one int8 block table and an int8
    head over it whose top logits are float32's: exact where the table was int8 blocks already,
    and a quarter of float32's bytes where the bfloat16 route held two half-size copies."""
    model = build_model(tokenizer)
    fp32_table = model.model.embed_tokens.weight.detach().clone()
    report = quantize_model(model, "int4")
    assert list(report.skipped) == ["lm_head"] and "int8" in report.skipped["lm_head"]
    table, head = model.model.embed_tokens, model.lm_head
    assert isinstance(table, llm_w8a8.Int8BlockEmbedding) and isinstance(head, llm_w8a8.Int8Head) and head.table is table
    assert not model.config.tie_word_embeddings  # transformers must not tie a float weight back in
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(table(ids), fp32_table[ids], atol=fp32_table.abs().max().item() / 127)
    x = torch.randn(4, HIDDEN)
    with torch.inference_mode():
        logits = head(x)
    exact = x @ table.dequantized().T
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    assert table.qweight.dtype == torch.int8 and LLMRuntime(model, tokenizer, quantization=report).dtype == torch.float32


def test_fast_linear_matches_the_module(tokenizer):
    """The engine's direct kernel calls give exactly what the hooked, subclass-dispatched module gives."""
    model = build_model(tokenizer)
    quantize_model(model, "int4")
    x = torch.randn(3, 5, HIDDEN)
    for module in (model.model.layers[0].self_attn.q_proj, model.model.layers[1].mlp.down_proj):
        fast = fast_linear(module)
        assert fast is not module  # a direct path exists for int4 layers
        inputs = x if module.in_features == HIDDEN else torch.randn(3, 5, module.in_features)
        with torch.inference_mode():
            expected, got = module(inputs), fast(inputs)
        assert got.dtype == expected.dtype == torch.float32
        assert torch.equal(got, expected)


def test_int4_head_runs_prepacked_and_keeps_the_tie(tokenizer, monkeypatch):
    """On CPU without FBGEMM the tied bfloat16 head multiplies with a oneDNN-packed copy: the tie
    kept, the copy counted in the weight memory, and the bfloat16 matmul's logits away from each
    row's top."""
    no_fbgemm(monkeypatch)
    model = build_model(tokenizer)
    quantize_model(model, "int4")
    head, weight = model.lm_head, model.model.embed_tokens.weight
    assert isinstance(head, PackedBfloat16Head) and head.weight is weight
    x = torch.randn(2, 3, HIDDEN)
    with torch.inference_mode():
        logits = head(x)
        rounded = torch.nn.functional.linear(x.to(torch.bfloat16), weight).float()
        exact = x @ weight.float().t()
    assert logits.dtype == torch.float32 and logits.shape == (2, 3, weight.shape[0])
    top = rounded.amax(dim=-1, keepdim=True)
    near_top = rounded >= top - (top.abs() * REFINE_RELATIVE_BAND + REFINE_ABSOLUTE_BAND)  # the refined entries
    assert near_top.any(dim=-1).all() and not near_top.all()
    assert torch.equal(logits[~near_top], rounded[~near_top])
    assert torch.allclose(logits[near_top], exact[near_top], rtol=1e-5, atol=1e-5)
    assert weight_bytes(model) - weight_bytes(model.model) == weight.numel() * 2  # the packed copy


def near_tie_head_weight() -> tuple[torch.Tensor, torch.Tensor]:
    """(x, bfloat16 weight) where logits 5 and 7 differ by less than bfloat16's grid and 7 wins."""
    torch.manual_seed(0)
    x = torch.randn(1, HIDDEN)
    weight = (torch.randn(VOCAB_SIZE, HIDDEN) * 0.01).to(torch.bfloat16)
    weight[5] = (x.sign() * 0.4).to(torch.bfloat16)  # a clear winner, logit ~ 25
    weight[7] = weight[5]
    bumped = int(x.abs().argmax())
    bits = weight[7].view(torch.int16)
    bits[bumped] += 1  # one bfloat16 step further from zero, in x's direction: logit 7 grows a little
    exact = x @ weight.float().t()
    rounded = torch.nn.functional.linear(x.to(torch.bfloat16), weight).float()
    assert exact[0, 7] > exact[0, 5] and exact[0, 7] - exact[0, 5] < 0.1  # a near-tie in float32 ...
    assert rounded[0, 7] == rounded[0, 5]  # ... that bfloat16 rounds into a tie (argmax would say 5)
    return x, weight


def test_packed_head_decides_near_ties_in_float32():
    """Two logits closer than bfloat16's grid: the greedy choice must be float32's, not a rounding tie."""
    x, weight = near_tie_head_weight()
    head = PackedBfloat16Head.build(torch.nn.Parameter(weight, requires_grad=False), torch.float32)
    assert head is not None
    with torch.inference_mode():
        assert int(head(x).argmax()) == 7


def test_hooked_bfloat16_head_decides_near_ties_too(tokenizer, monkeypatch):
    """Where oneDNN can't pack (CUDA), the tied head is a hooked nn.Linear; it refines the same way."""
    monkeypatch.setattr(PackedBfloat16Head, "build", classmethod(lambda cls, weight, dtype: None))
    no_fbgemm(monkeypatch)
    model = build_model(tokenizer)
    quantize_model(model, "int4")
    x, weight = near_tie_head_weight()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(weight)
    head = model.lm_head
    assert type(head) is torch.nn.Linear and head.weight is model.model.embed_tokens.weight
    with torch.inference_mode():
        assert int(head(x).argmax()) == 7
        assert int(fast_linear(head)(x).argmax()) == 7


def test_fast_linear_defers_to_foreign_hooks(tokenizer):
    model = build_model(tokenizer)
    quantize_model(model, "int4")
    layer = model.model.layers[0].self_attn.q_proj
    layer.register_forward_hook(lambda _, args, output: output * 2)
    assert fast_linear(layer) is layer  # a hook we didn't put there must still run
    plain = torch.nn.Linear(4, 4)
    assert fast_linear(plain) is plain


def test_fast_linear_pads_two_or_three_rows_of_a_large_float32_layer():
    """A large float32 layer (the size of a real vocabulary head) gets 2-3 rows padded to 4 (one
    blocked GEMM instead of a matrix-vector pass per row); every row's result stays the layer's, for
    any row count and leading shape. Small, hooked or non-float32 layers are left as they are."""
    torch.manual_seed(0)
    large = torch.nn.Linear(512, GEMV_PRONE_MIN_BYTES // (512 * 4), bias=True)
    fast = fast_linear(large)
    assert fast is not large
    with torch.inference_mode():
        for shape in ((1, 512), (2, 512), (3, 512), (4, 512), (5, 512), (3, 1, 512), (1, 2, 512)):
            x = torch.randn(*shape)
            got, expected = fast(x), large(x)
            assert got.shape == expected.shape == (*shape[:-1], large.out_features)
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    small = torch.nn.Linear(512, 64)
    assert not _gemv_prone(small) and fast_linear(small) is small
    hooked = torch.nn.Linear(512, large.out_features)
    hooked.register_forward_hook(lambda _, args, output: output * 2)
    assert _gemv_prone(large) and not _gemv_prone(hooked) and fast_linear(hooked) is hooked  # its hook must run
    assert not _gemv_prone(large.to(torch.bfloat16))


def test_int4_uses_groups_of_32(tokenizer):
    """SmolLM2's packaged weights were Q4_1 in blocks of 32: the int4 grid must line up with them."""
    model = build_model(tokenizer)
    quantize_model(model, "int4")
    for layer in (model.model.layers[0].mlp.down_proj, model.model.layers[0].self_attn.q_proj):
        assert list(layer.weight.block_size) == [1, 32]


def test_int4_logits_track_float(tokenizer, prompt_ids):
    """4-bit weights perturb the logits but must keep their shape (a broken packing would not)."""
    reference, model = build_model(tokenizer), build_model(tokenizer)
    quantize_model(model, "int4")
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        expected, got = reference(ids).logits[0, -1], model(ids).logits[0, -1]
    assert torch.nn.functional.cosine_similarity(expected, got, dim=0) > MIN_INT4_LOGIT_COSINE


def test_int4_smaller_than_int8(tokenizer):
    sizes = {}
    for mode in ("int8", "int4"):
        model = build_model(tokenizer)
        quantize_model(model, mode)
        sizes[mode] = weight_bytes(model)
    assert sizes["int4"] < sizes["int8"]


def test_int4_refuses_a_model_no_kernel_can_take(tokenizer):
    # in_features 40 and 72: the int4 group size (32) divides neither.
    model = build_model(tokenizer, hidden=40, intermediate=72)
    with pytest.raises(UnsupportedQuantization, match="no linear layer"):
        quantize_model(model, "int4")


def test_unknown_quantization_is_refused(tokenizer):
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_model(build_model(tokenizer), "int2")


# --- config and loading ------------------------------------------------------------------------


def test_config_forbids_unknown_fields_and_bad_values():
    with pytest.raises(ValidationError):
        LLMConfig(modle="packaged")
    with pytest.raises(ValidationError):
        LLMConfig(quantization="int2")
    with pytest.raises(ValidationError):
        LLMConfig(device="toaster")
    with pytest.raises(ValidationError):
        LLMConfig(threads=0)


def test_from_config_loads_a_local_directory(tmp_path, tokenizer, prompt_ids, runtime):
    build_model(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    threads = torch.get_num_threads()
    try:
        loaded = LLMRuntime.from_config(LLMConfig(model=str(tmp_path), threads=1, max_context=128))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert loaded.max_context == 128
    assert loaded.chat_template(PROMPT) == prompt_ids
    expected = sampled(runtime, prompt_ids, temperature=0, max_tokens=NEW_TOKENS)
    assert sampled(loaded, prompt_ids, temperature=0, max_tokens=NEW_TOKENS) == expected


def test_from_config_reports_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        LLMRuntime.from_config(LLMConfig(model=str(tmp_path / "absent")))


def test_max_context_beyond_the_model_is_refused(tokenizer):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        LLMRuntime(build_model(tokenizer), tokenizer, max_context=MAX_POSITIONS + 1)


def test_sampler_survives_denormal_temperature_and_top_p():
    """Found by schemathesis through the API: logits / 3e-295 overflowed to inf (NaN probabilities)
    and a denormal top_p masked every token. The sampler itself now serves both."""
    from modalities.llm.sampling import SamplingParams, make_generator, sample_next_token

    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    tiny_t = SamplingParams(temperature=3.156953962359937e-295, seed=1)
    assert tiny_t.greedy and int(sample_next_token(logits, tiny_t, make_generator(tiny_t, logits.device))) == 1
    tiny_p = SamplingParams(temperature=1.0, top_p=5e-324, seed=1)
    for _ in range(5):  # only the most likely token survives the nucleus
        assert int(sample_next_token(logits, tiny_p, make_generator(tiny_p, logits.device))) == 1
    with pytest.raises(InputError):
        SamplingParams(seed=2**64)
    assert SamplingParams(seed=2**63 - 1).seed == 2**63 - 1
