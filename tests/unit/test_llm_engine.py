"""The continuous-batching engine on a tiny random Llama: same tokens as the eager loop, whatever joins,
leaves, waits or fails around a request.

The tiny model's matrices are scaled up (WEIGHT_SCALE) so that greedy decoding wanders over the
vocabulary instead of repeating one token: a wrong row, position or cache entry then shows up as a
different token. Schedules are made deterministic with the engine's `on_step` hook, which can pause
the engine thread after a given step while the test submits or cancels requests.
"""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from modalities.llm import EagerDecodeLoop, LLMConfig, LLMRuntime, SamplingParams
from modalities.llm.config import SUPPORTED_ARCHITECTURES
from modalities.llm.engine import BatchedEngine, EngineError, EngineStats
from modalities.llm.engine import batched as llm_engine
from modalities.llm.quant import quantize_model
from modalities.llm.quant.w8a8 import calibration_ids
from tests.unit.test_llm import PROMPT, VOCAB_SIZE, build_model, build_tokenizer

WEIGHT_SCALE = 10.0  # random init at 1x decodes one token over and over; 10x gives varied greedy text
PROMPT_LENGTHS = (5, 17, 40, 9)
NEW_TOKENS = 24
PAUSE_AT_STEP = 3
WAIT_S = 30.0  # generous: only a broken engine gets near it
GREEDY = SamplingParams(temperature=0)
NO_EOS: frozenset[int] = frozenset()


class Pacer:
    """`on_step` hook: records every step's stats; pauses the engine thread after the steps given."""

    def __init__(self, *pause_at: int) -> None:
        self.history: list[EngineStats] = []
        self._paused = {step: threading.Event() for step in pause_at}
        self._resume = {step: threading.Event() for step in pause_at}

    def __call__(self, stats: EngineStats) -> None:
        self.history.append(stats)
        if stats.steps in self._paused:
            self._paused[stats.steps].set()
            self._resume[stats.steps].wait(WAIT_S)

    def wait_paused(self, step: int) -> None:
        assert self._paused[step].wait(WAIT_S), f"the engine never reached step {step}"

    def resume(self, step: int) -> None:
        self._resume[step].set()


def lively_model(tokenizer, quantization: str = "none"):
    model = build_model(tokenizer)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(WEIGHT_SCALE)
    quantize_model(model, quantization, calibration_ids(tokenizer) if quantization == "w8a8" else None)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return lively_model(tokenizer)


@pytest.fixture(scope="module")
def prompts(model) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        return [embedding(torch.randint(0, VOCAB_SIZE, (1, n), generator=generator)) for n in PROMPT_LENGTHS]


def eager_tokens(model, prompts, params=GREEDY, new_tokens=NEW_TOKENS) -> list[list[int]]:
    loop = EagerDecodeLoop(model)
    return [list(loop.run(p, params, new_tokens, NO_EOS)) for p in prompts]


def wait_for(condition, what: str) -> None:
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# --- correctness under batching ----------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["none", "int8", "int4", "w8a8"])
def test_greedy_matches_eager_with_staggered_joins(tokenizer, prompts, make_engine, quantization):
    model = lively_model(tokenizer, quantization)
    expected = eager_tokens(model, prompts)
    assert all(len(set(tokens)) > NEW_TOKENS // 3 for tokens in expected), "greedy text should vary"
    pacer = Pacer(1, PAUSE_AT_STEP)
    # min_capacity 8: the cache grows (doubling, rows and positions) while rows are mid-decode.
    engine = make_engine(model, max_slots=4, min_capacity=8, on_step=pacer)
    streams = [engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)]
    pacer.wait_paused(1)
    streams.append(engine.run(prompts[1], GREEDY, NEW_TOKENS, NO_EOS))
    pacer.resume(1)
    pacer.wait_paused(PAUSE_AT_STEP)
    streams += [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in prompts[2:]]
    pacer.resume(PAUSE_AT_STEP)
    got = [list(stream) for stream in streams]
    assert got == expected
    # One request alone, then two sharing the steps, then all four (each joining mid-decode).
    assert [s.active for s in pacer.history[: PAUSE_AT_STEP + 1]] == [1, 2, 2, 4]
    assert max(s.cache_capacity for s in pacer.history) >= max(PROMPT_LENGTHS) + NEW_TOKENS - 1


def test_seeded_sampling_is_reproducible_and_matches_eager(model, prompts, make_engine):
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=123)
    expected = eager_tokens(model, prompts[:1], params)[0]
    engine = make_engine(model)
    streams = [engine.run(prompts[0], params, NEW_TOKENS, NO_EOS) for _ in range(2)]
    other_seed = engine.run(prompts[0], SamplingParams(temperature=0.9, top_p=0.95, seed=124), NEW_TOKENS, NO_EOS)
    greedy = engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)
    a, b, c, g = (list(s) for s in (*streams, other_seed, greedy))
    assert a == b == expected
    assert c != a
    assert g == eager_tokens(model, prompts[:1])[0]


def test_eos_ends_a_stream_early(model, prompts, make_engine):
    expected = eager_tokens(model, prompts[:1])[0]
    stop_at = 5
    eos = frozenset({expected[stop_at]}) - frozenset(expected[:stop_at])
    assert eos, "the chosen EOS id appears earlier; pick another position"
    engine = make_engine(model)
    streams = [engine.run(prompts[0], GREEDY, NEW_TOKENS, eos), engine.run(prompts[1], GREEDY, NEW_TOKENS, NO_EOS)]
    short, long = (list(s) for s in streams)
    assert short == expected[: stop_at + 1]
    assert long == eager_tokens(model, prompts[1:2])[0]


# --- scheduling: cancel, queue -----------------------------------------------------------------


def test_cancelled_stream_frees_its_slot_for_the_queue(model, prompts, make_engine):
    expected = eager_tokens(model, prompts[:3])
    pacer = Pacer(1, PAUSE_AT_STEP)
    engine = make_engine(model, max_slots=2, on_step=pacer)
    a = engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(1)
    b, c = (engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in prompts[1:3])
    pacer.resume(1)
    pacer.wait_paused(PAUSE_AT_STEP)
    assert (engine.stats().active, engine.stats().queued) == (2, 1)
    assert next(a) == expected[0][0]
    a.close()
    pacer.resume(PAUSE_AT_STEP)
    got_b, got_c = list(b), list(c)
    assert got_b == expected[1]
    assert got_c == expected[2]
    # The very next step already ran with the queued request in the cancelled one's slot, B mid-way.
    after = pacer.history[PAUSE_AT_STEP]
    assert (after.active, after.queued) == (2, 0)
    assert list(a) == []  # a closed stream yields nothing more
    final = engine.stats()
    assert (final.active, final.queued, final.completed) == (0, 0, 3)


def test_more_requests_than_slots_wait_in_order_and_all_complete(model, prompts, make_engine):
    many = [*prompts, *prompts[:2]]
    expected = eager_tokens(model, many)
    pacer = Pacer(1)
    engine = make_engine(model, max_slots=2, on_step=pacer)
    first = engine.run(many[0], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(1)
    rest = [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in many[1:]]
    assert (engine.stats().active, engine.stats().queued) == (1, len(many) - 1)
    pacer.resume(1)
    got = [list(s) for s in [first, *rest]]
    assert got == expected
    assert max(s.active for s in pacer.history) == 2
    assert engine.stats().completed == len(many)


def test_joining_prompts_are_prefilled_in_packs_within_the_token_budget(model, prompts, make_engine, monkeypatch):
    """Each prefill forward takes the next PREFILL_TOKEN_BUDGET positions of the prompts in line:
    short ones packed, a long one cut into chunks (its rest continuing from its cached K/V)."""
    monkeypatch.setattr(llm_engine, "PREFILL_TOKEN_BUDGET", 30)
    pacer = Pacer(1)
    engine = make_engine(model, max_slots=5, on_step=pacer)
    packs: list[list[int]] = []
    prefill = engine.forward.prefill

    def spy(embeds, cache, first_row, cached=None):
        packs.append([e.shape[1] for e in embeds])
        return prefill(embeds, cache, first_row, cached)

    monkeypatch.setattr(engine.forward, "prefill", spy)
    first = engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(1)
    rest = [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in prompts]  # lengths 5, 17, 40, 9
    pacer.resume(1)
    got = [list(s) for s in [first, *rest]]
    assert packs == [[5], [5, 17, 8], [30], [2, 9]]  # the 40-token prompt: 8 + 30 + 2
    assert got == eager_tokens(model, [prompts[0], *prompts])


def test_cancelling_a_queued_request_removes_it_at_once(model, prompts, make_engine):
    pacer = Pacer(1)
    engine = make_engine(model, max_slots=1, on_step=pacer)
    running = engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(1)
    queued = engine.run(prompts[1], GREEDY, NEW_TOKENS, NO_EOS)
    assert engine.stats().queued == 1
    queued.close()
    assert engine.stats().queued == 0
    pacer.resume(1)
    assert list(running) == eager_tokens(model, prompts[:1])[0]


def test_runtime_stream_closed_early_frees_the_slot(tokenizer, model, make_engine):
    engine = make_engine(model)
    runtime = LLMRuntime(model, tokenizer, decode_loop=engine)
    eager = LLMRuntime(model, tokenizer, decode_loop=EagerDecodeLoop(model))
    ids = runtime.chat_template(PROMPT)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    assert runtime.generate(input_ids=ids, params=params) == eager.generate(input_ids=ids, params=params)
    stream = runtime.stream(input_ids=ids, params=SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    next(stream)
    stream.close()
    wait_for(lambda: runtime.engine_stats().active == 0, "the closed stream's slot to be freed")
    assert runtime.engine_stats().completed == 2


# --- failures ----------------------------------------------------------------------------------


def test_step_error_fails_its_streams_and_the_engine_recovers(model, prompts, make_engine, monkeypatch):
    engine = make_engine(model, max_slots=2)
    monkeypatch.setattr(engine.forward, "decode", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
    streams = [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in prompts[:3]]
    for stream in streams:
        with pytest.raises(EngineError) as info:
            list(stream)
        assert "boom" in str(info.value.__cause__)
    monkeypatch.undo()
    assert engine.stats().alive
    assert list(engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)) == eager_tokens(model, prompts[:1])[0]


def test_prefill_error_fails_only_the_joining_requests(model, prompts, make_engine, monkeypatch):
    pacer = Pacer(1)
    engine = make_engine(model, max_slots=3, on_step=pacer)
    running = engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(1)
    monkeypatch.setattr(engine.forward, "prefill", lambda *args: (_ for _ in ()).throw(RuntimeError("bad prompt")))
    joining = [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in prompts[1:3]]
    pacer.resume(1)
    for stream in joining:
        with pytest.raises(EngineError, match="bad prompt"):
            list(stream)
    assert list(running) == eager_tokens(model, prompts[:1])[0]


def test_dead_engine_thread_fails_pending_and_new_requests(model, prompts, make_engine):
    submitted = threading.Event()

    def crash(stats: EngineStats) -> None:  # an exception outside any request's step: a bug in the loop
        submitted.wait(WAIT_S)
        raise RuntimeError("engine bug")

    engine = make_engine(model, max_slots=1, on_step=crash)
    streams = [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in prompts[:2]]  # one running, one queued
    submitted.set()
    for stream in streams:
        with pytest.raises(EngineError):
            list(stream)
    assert not engine.stats().alive
    with pytest.raises(EngineError):
        engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)


def test_idle_engine_thread_ends_and_a_new_request_restarts_it(model, prompts, make_engine, monkeypatch):
    monkeypatch.setattr(llm_engine, "IDLE_EXIT_S", 0.05)
    engine = make_engine(model)
    expected = eager_tokens(model, prompts[:1])[0]
    assert list(engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)) == expected
    first_thread = engine._thread
    wait_for(lambda: not first_thread.is_alive(), "the idle engine thread to end")
    assert engine.stats().alive and engine.stats().cache_capacity == 0
    assert list(engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)) == expected
    assert engine._thread is not first_thread


# --- limits and configuration ------------------------------------------------------------------


def test_request_beyond_the_context_is_refused(model, prompts, make_engine):
    engine = make_engine(model, max_context=32)
    with pytest.raises(ValueError, match="context"):
        engine.run(prompts[2], GREEDY, NEW_TOKENS, NO_EOS)  # 40 prompt tokens
    assert len(list(engine.run(prompts[0], GREEDY, 28, NO_EOS))) == 28  # 5 + 28 - 1 = 32 fits


def test_unsupported_architecture_is_refused():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(ValueError, match="supports llama; got 'gpt2' \\(GPT2LMHeadModel\\).*eager"):
        BatchedEngine(gpt2)


def test_runtime_refuses_a_non_llama_model_for_the_batched_engine_before_loading_it(tmp_path, tokenizer, monkeypatch):
    qwen2 = Qwen2Config(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    Qwen2ForCausalLM(qwen2).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    threads = torch.get_num_threads()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(AutoModelForCausalLM, "from_pretrained", pytest.fail)  # refused from config.json alone
            with pytest.raises(ValueError) as info:
                LLMRuntime.from_config(LLMConfig(model=str(tmp_path), threads=1))
        eager = LLMRuntime.from_config(LLMConfig(model=str(tmp_path), threads=1, engine="eager"))
    finally:
        torch.set_num_threads(threads)
    assert str(info.value) == (
        "the batched engine supports llama; got 'qwen2' (Qwen2ForCausalLM): set llm.engine to 'eager' or pick a "
        "Llama-architecture model"
    )
    assert isinstance(eager.decode_loop, EagerDecodeLoop)
    assert "qwen2" not in SUPPORTED_ARCHITECTURES and "llama" in SUPPORTED_ARCHITECTURES


def test_config_picks_the_decode_loop(tmp_path, tokenizer):
    build_model(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    threads = torch.get_num_threads()
    try:
        batched = LLMRuntime.from_config(LLMConfig(model=str(tmp_path), threads=1, max_batch=3))
        eager = LLMRuntime.from_config(LLMConfig(model=str(tmp_path), threads=1, engine="eager"))
    finally:
        torch.set_num_threads(threads)
    assert LLMConfig().engine == "batched"
    assert isinstance(batched.decode_loop, BatchedEngine)
    assert batched.engine_stats().max_slots == 3
    assert isinstance(eager.decode_loop, EagerDecodeLoop)
    assert eager.engine_stats() is None
    ids = batched.chat_template(PROMPT)
    params = SamplingParams(temperature=0.7, seed=3, max_tokens=NEW_TOKENS)
    assert batched.generate(input_ids=ids, params=params) == eager.generate(input_ids=ids, params=params)
    batched.decode_loop.close()
