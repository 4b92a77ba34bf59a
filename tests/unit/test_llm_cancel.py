"""Cancellation at every stage of a batched-engine request (queued, prefilling, decoding), chunked
prefill interleaved with decode steps, the engine's counters and memory after requests leave, and
the decoder deployment cancelling a dropped stream without waiting for its blocked `next()`.

Tiny random Llama as in test_llm_engine; schedules are paced with the engine's `on_step` hook and
with a gate inside the model's prefill forward, never with sleeps.
"""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
import torch

from fusion.prompt import Message
from modalities.heap import trim_heap
from modalities.llm import EagerDecodeLoop, LLMRuntime, SamplingParams
from modalities.llm.engine import BatchedEngine, EngineStats, SlotCache
from modalities.llm.engine import batched as llm_engine
from serve.deployments import llm as llm_deployment
from serve.deployments.contracts import DecodeRequest
from serve.deployments.llm import LLMDecoder
from tests.helpers.tokenizer import tiny_chat_tokenizer
from tests.unit.test_llm import VOCAB_SIZE, build_model, build_tokenizer
from tests.unit.test_llm_engine import GREEDY, NO_EOS, WAIT_S, Pacer, eager_tokens, lively_model

NEW_TOKENS = 12
LONG = 40  # prompt positions of the long prompt: 5 chunks of CHUNK
CHUNK = 8


@pytest.fixture(scope="module")
def model():
    return lively_model(build_tokenizer())


@pytest.fixture(scope="module")
def prompts(model) -> list[torch.Tensor]:
    """Short prompts (5, 9, 3 positions) and a long one (LONG) last."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        embed = model.get_input_embeddings()
        return [embed(torch.randint(0, VOCAB_SIZE, (1, n), generator=generator)) for n in (5, 9, 3, LONG)]


@pytest.fixture(scope="module")
def expected(model, prompts) -> list[list[int]]:
    return eager_tokens(model, prompts, new_tokens=NEW_TOKENS)


class Recorder:
    """Wraps an engine's prefill and decode: records what ran ('P' + chunk lengths, or 'D' + rows),
    and can hold the engine thread inside a given prefill call until the test lets it go."""

    def __init__(self, engine: BatchedEngine, monkeypatch, hold_prefill: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.hold_prefill = hold_prefill  # 1-based index of the prefill call to hold
        self.inside = threading.Event()
        self.release = threading.Event()
        prefill, decode = engine.forward.prefill, engine.forward.decode

        def spy_prefill(chunks, cache, first_row, cached=None):
            self.calls.append(("P", *(c.shape[1] for c in chunks)))
            if len([c for c in self.calls if c[0] == "P"]) == self.hold_prefill:
                self.inside.set()
                assert self.release.wait(WAIT_S), "the test never released the prefill"
            return prefill(chunks, cache, first_row, cached)

        def spy_decode(token_ids, positions, span, cache, first_row=0):
            self.calls.append(("D", token_ids.shape[0]))
            return decode(token_ids, positions, span, cache, first_row)

        monkeypatch.setattr(engine.forward, "prefill", spy_prefill)
        monkeypatch.setattr(engine.forward, "decode", spy_decode)

    @property
    def prefilled(self) -> int:
        return sum(sum(call[1:]) for call in self.calls if call[0] == "P")


def assert_drained(engine: BatchedEngine, prompt: torch.Tensor, expected: list[int]) -> EngineStats:
    """A new request completes with the right tokens; then nothing is queued, prefilling or running.
    (A stream ends only once the engine has dropped it, and any cancelled request was dropped at a
    chunk or step boundary before this one finished, so no waiting is needed.)"""
    assert list(engine.run(prompt, GREEDY, NEW_TOKENS, NO_EOS)) == expected
    stats = engine.stats()
    assert (stats.active, stats.prefilling, stats.queued, stats.running) == (0, 0, 0, 0)
    return stats


def consume_in_thread(stream) -> tuple[threading.Thread, list]:
    """Iterate `stream` on another thread (a consumer blocked in `next()`); the list gets the tokens."""
    got: list = []
    thread = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    thread.start()
    return thread, got


# --- cancelled while queued ----------------------------------------------------------------------


def test_a_request_cancelled_while_queued_is_never_prefilled(model, prompts, expected, make_engine, monkeypatch):
    pacer = Pacer(1)
    engine = make_engine(model, max_slots=1, on_step=pacer)
    recorder = Recorder(engine, monkeypatch)
    running = engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(1)
    queued = engine.run(prompts[3], GREEDY, NEW_TOKENS, NO_EOS)
    waiter, got = consume_in_thread(queued)  # blocked in next(): nothing is ever computed for it
    assert engine.stats().queued == 1
    queued.cancel()
    waiter.join(WAIT_S)
    assert not waiter.is_alive() and got == []  # the blocked next() ended at once, the engine still paused
    stats = engine.stats()
    assert (stats.queued, stats.cancelled) == (0, 1)
    pacer.resume(1)
    assert list(running) == expected[0]
    assert recorder.prefilled == prompts[0].shape[1]  # the cancelled prompt's 40 positions never ran
    stats = assert_drained(engine, prompts[1], expected[1])
    assert stats.prompt_tokens == prompts[0].shape[1] + prompts[1].shape[1]
    assert recorder.prefilled == stats.prompt_tokens


# --- cancelled mid-prefill -----------------------------------------------------------------------


def test_a_request_cancelled_mid_prefill_stops_at_the_next_chunk_boundary(model, prompts, expected, make_engine, monkeypatch):
    monkeypatch.setattr(llm_engine, "PREFILL_TOKEN_BUDGET", CHUNK)
    engine = make_engine(model)
    recorder = Recorder(engine, monkeypatch, hold_prefill=2)
    long = engine.run(prompts[3], GREEDY, NEW_TOKENS, NO_EOS)
    waiter, got = consume_in_thread(long)
    assert recorder.inside.wait(WAIT_S)  # the engine thread is inside the second chunk's forward
    stats = engine.stats()
    assert (stats.prefilling, stats.running, stats.prompt_tokens) == (1, 1, CHUNK)
    long.cancel()
    waiter.join(WAIT_S)
    assert not waiter.is_alive() and got == []  # the consumer is free while the chunk still runs
    recorder.release.set()
    assert_drained(engine, prompts[0], expected[0])
    # Two chunks of the long prompt ran (the one in flight when it was cancelled), none after it.
    assert recorder.calls[:2] == [("P", CHUNK), ("P", CHUNK)]
    assert all(call == ("P", prompts[0].shape[1]) or call[0] == "D" for call in recorder.calls[2:])
    stats = engine.stats()
    assert stats.prompt_tokens == 2 * CHUNK + prompts[0].shape[1]
    assert (stats.completed, stats.cancelled) == (2, 1)


def test_cancelling_one_of_several_prefilling_requests_keeps_the_others_rows(model, prompts, expected, make_engine, monkeypatch):
    """Rows are compacted when a prefilling request leaves: the ones behind it move down with
    their K/V so far, and still give the eager loop's tokens."""
    monkeypatch.setattr(llm_engine, "PREFILL_TOKEN_BUDGET", CHUNK)
    engine = make_engine(model, max_slots=4)
    recorder = Recorder(engine, monkeypatch, hold_prefill=1)
    first = engine.run(prompts[3], GREEDY, NEW_TOKENS, NO_EOS)
    assert recorder.inside.wait(WAIT_S)
    others = [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in (prompts[3], prompts[1], prompts[3])]
    first.cancel()  # holds row 0 mid-prefill: the three behind it move down a row when it leaves
    recorder.release.set()
    assert [list(s) for s in others] == [expected[3], expected[1], expected[3]]
    assert_drained(engine, prompts[2], expected[2])


# --- chunked prefill ---------------------------------------------------------------------------


def test_a_long_prefill_is_chunked_and_interleaved_with_decode_steps(model, prompts, expected, make_engine, monkeypatch):
    monkeypatch.setattr(llm_engine, "PREFILL_TOKEN_BUDGET", CHUNK)
    pacer = Pacer(1)
    engine = make_engine(model, on_step=pacer)
    recorder = Recorder(engine, monkeypatch)
    running = engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(1)
    long = engine.run(prompts[3], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.resume(1)
    assert list(running) == expected[0]
    assert list(long) == expected[3]  # chunk by chunk through the cache: the eager loop's tokens
    joined = recorder.calls.index(("D", 1), 1) + 1  # after the running request's first step
    # Each chunk of the long prompt, then a step of the running request, until the last chunk,
    # after which both decode together.
    chunks = LONG // CHUNK
    assert recorder.calls[joined : joined + 2 * chunks] == [("P", CHUNK), ("D", 1)] * (chunks - 1) + [("P", CHUNK), ("D", 2)]


@pytest.mark.parametrize("quantization", ["none", "int8", "int4", "w8a8"])
@pytest.mark.parametrize("budget", [7, 16])
def test_chunked_prefill_gives_the_unchunked_tokens(prompts, make_engine, monkeypatch, quantization, budget):
    model = lively_model(build_tokenizer(), quantization)
    reference = make_engine(model)  # the default budget: each prompt in one forward
    unchunked = [list(reference.run(p, GREEDY, NEW_TOKENS, NO_EOS)) for p in prompts]
    assert unchunked == eager_tokens(model, prompts, new_tokens=NEW_TOKENS)
    monkeypatch.setattr(llm_engine, "PREFILL_TOKEN_BUDGET", budget)
    engine = make_engine(model, max_slots=4)
    streams = [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in prompts]  # packed and chunked together
    assert [list(s) for s in streams] == unchunked


# --- cancelled while decoding --------------------------------------------------------------------


def test_a_request_cancelled_while_decoding_frees_its_slot_within_one_step(model, prompts, expected, make_engine):
    pacer = Pacer(2, 3)
    engine = make_engine(model, max_slots=2, on_step=pacer)
    a = engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)
    b = engine.run(prompts[1], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(2)
    c = engine.run(prompts[2], GREEDY, NEW_TOKENS, NO_EOS)
    assert [next(a), next(a)] == expected[0][:2]
    waiter, got = consume_in_thread(a)
    a.cancel()
    waiter.join(WAIT_S)
    assert not waiter.is_alive()
    assert got in ([], expected[0][2:3])  # at most the token already waiting (step 2's), none after
    assert (engine.stats().active, engine.stats().queued) == (2, 1)  # the engine is paused: a still holds its row
    pacer.resume(2)
    pacer.wait_paused(3)
    # The very next step ran without a: its row went to the queued request.
    assert (pacer.history[2].active, pacer.history[2].queued) == (2, 0)
    pacer.resume(3)
    assert list(b) == expected[1]
    assert list(c) == expected[2]
    stats = assert_drained(engine, prompts[0], expected[0])
    assert (stats.completed, stats.cancelled) == (4, 1)


# --- many cycles -------------------------------------------------------------------------------


def test_a_hundred_cancel_and_complete_cycles_leave_the_counters_at_zero(model, prompts, expected, make_engine, monkeypatch):
    """Requests cancelled at random stages (queued, after their first token, mid-decode) among ones
    that complete, with rows joining, leaving and moving all the time: the completed ones give the
    eager loop's tokens, and at the end nothing is left queued, prefilling or running."""
    monkeypatch.setattr(llm_engine, "PREFILL_TOKEN_BUDGET", 16)  # the long prompt goes in 3 chunks
    engine = make_engine(model, max_slots=3, min_capacity=8)
    rng = random.Random(0)
    cycles, submitted, cancels = 120, 0, 0
    for _ in range(cycles):
        picks = [rng.randrange(len(prompts)) for _ in range(rng.randint(1, 4))]
        streams = [(i, engine.run(prompts[i], GREEDY, NEW_TOKENS, NO_EOS)) for i in picks]
        submitted += len(streams)
        for i, stream in streams:
            stage = rng.choice(["queued", "first token", "mid-decode", "complete"])
            if stage == "complete":
                assert list(stream) == expected[i]
                continue
            if stage != "queued":
                took = [next(stream) for _ in range(1 if stage == "first token" else NEW_TOKENS // 2)]
                assert took == expected[i][: len(took)]
            stream.cancel()
            cancels += 1
            assert list(stream) == []
    stats = assert_drained(engine, prompts[0], expected[0])
    assert stats.completed == submitted + 1
    # A request the engine finished before its consumer got to cancel it is not counted.
    assert 0 < stats.cancelled <= cancels
    assert stats.alive


# --- memory ------------------------------------------------------------------------------------


def test_a_long_prompt_leaves_nothing_behind_and_the_cache_shrinks_after_it(model, prompts, make_engine, monkeypatch):
    """A short request decodes on while a long prompt is prefilled in chunks, answers and leaves:
    the long one's embeddings go with its prefill, the cache grown for it shrinks back to what the
    short row needs, and the heap is trimmed."""
    monkeypatch.setattr(llm_engine, "PREFILL_TOKEN_BUDGET", CHUNK)
    monkeypatch.setattr(llm_engine, "TRIM_PROMPT_TOKENS", LONG)
    trims: list[bool] = []
    monkeypatch.setattr(llm_engine, "trim_heap", lambda: trims.append(True) or True)
    chunks = LONG // CHUNK
    # Step 1: the short one alone; then a chunk of the long one before each step; after the last
    # chunk (step 1 + chunks) it decodes its second and last token, and leaves.
    last = 1 + chunks
    pacer = Pacer(1, last)
    engine = make_engine(model, max_slots=2, min_capacity=8, on_step=pacer)
    short = engine.run(prompts[2], GREEDY, 200, NO_EOS)  # 3 positions, decoding all along
    pacer.wait_paused(1)
    long = engine.run(prompts[3], GREEDY, 2, NO_EOS)
    request = long._request
    pacer.resume(1)
    pacer.wait_paused(last)
    assert [s.prefilling for s in pacer.history[1:last]] == [1] * (chunks - 1) + [0]  # steps 2.. and `last`
    assert pacer.history[last - 2].cache_capacity >= LONG  # grown for the long prompt
    assert request.released and request.embeds is None and request.prefix_keys is None
    stats = engine.stats()
    assert (stats.active, stats.prefilling, stats.queued) == (1, 0, 0)
    assert stats.cache_capacity == 16  # the short row's 3 + `last` positions, rounded up
    pacer.resume(last)
    assert len(list(long)) == 2
    short.cancel()
    expected_alone = list(EagerDecodeLoop(model).run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS))
    assert_drained(engine, prompts[0], expected_alone)
    assert trims  # heap pages handed back after the long prompt left


def test_slot_cache_shrinks_only_when_a_quarter_is_enough_and_keeps_the_rows():
    cache = SlotCache(2, 1, 4, max_rows=8, max_length=64, dtype=torch.float32, device=torch.device("cpu"), min_capacity=8)
    cache.reserve(4, 64)
    for index, tensor in enumerate(cache.keys):
        tensor[:2, :, :10] = torch.arange(2 * 10 * 4, dtype=torch.float32).view(2, 1, 10, 4) + index
    assert not cache.shrink(4, 20)  # 4 x 32 is more than a quarter of 4 x 64
    assert cache.shrink(2, 10) and (cache.rows, cache.capacity) == (2, 16)
    for index, tensor in enumerate(cache.keys):
        assert torch.equal(tensor[:2, :, :10], torch.arange(80, dtype=torch.float32).view(2, 1, 10, 4) + index)
    assert cache.nbytes() == 2 * 2 * (2 * 1 * 16 * 4) * 4
    assert cache.shrink(0, 0) and cache.nbytes() == 0 and cache.capacity == 0


def test_trim_heap_runs_here_and_is_a_no_op_without_glibc(monkeypatch):
    from modalities import heap

    assert trim_heap() in (True, False)  # glibc: True; another libc: False, never an error
    heap._malloc_trim.cache_clear()
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    try:
        assert trim_heap() is False
    finally:
        heap._malloc_trim.cache_clear()


def test_the_idle_engine_releases_its_cache_and_trims_the_heap(model, prompts, expected, make_engine, monkeypatch):
    idle = threading.Event()
    monkeypatch.setattr(llm_engine, "trim_heap", lambda: idle.set() or True)
    engine = make_engine(model)
    assert list(engine.run(prompts[0], GREEDY, NEW_TOKENS, NO_EOS)) == expected[0]
    assert idle.wait(WAIT_S)  # the engine went idle: cache released, then the heap trimmed
    stats = engine.stats()
    assert (stats.cache_capacity, stats.cache_bytes) == (0, 0)


# --- the decoder deployment ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_tokenizer():
    return tiny_chat_tokenizer()


def decode_request(text: str, max_tokens: int = 50) -> DecodeRequest:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return DecodeRequest([Message("user", [text])], {}, params)


def test_a_dropped_generate_leaves_the_engine_queue_without_waiting_for_its_next(chat_tokenizer, make_engine):
    """The decoder's stream is queued behind a running request (one slot); its executor thread is
    blocked in `next()`. Dropping the stream removes it from the engine's queue at once and frees
    that thread, while the engine is still paused; /health's figures agree with the engine's."""
    chat_model = build_model(chat_tokenizer)
    pacer = Pacer(1)
    engine = make_engine(chat_model, max_slots=1, on_step=pacer)
    runtime = LLMRuntime(chat_model, chat_tokenizer, decode_loop=engine)
    config = {"fusion": {"allow_random_projectors": True}, "llm": {"threads": 1}}
    decoder = LLMDecoder(config, runtime_factory=lambda _config: runtime)
    running = engine.run(runtime.embed(runtime.chat_template([{"role": "user", "content": "a"}])).unsqueeze(0), GREEDY, 30, NO_EOS)
    pacer.wait_paused(1)

    async def drop_while_queued() -> tuple[dict, dict]:
        events = decoder.generate(decode_request("hello"))
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0)  # generate runs to its first await: the request is queued, next() blocked
        queued = decoder.info()
        first.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await first
        return queued, decoder.info()

    queued, dropped = asyncio.run(drop_while_queued())
    assert (queued["engine_stats"]["queued"], queued["active_streams"]) == (1, 1)
    assert (dropped["engine_stats"]["queued"], dropped["engine_stats"]["cancelled"]) == (0, 1)
    assert dropped["active_streams"] == 0 and engine.stats().prompt_tokens == running._request.prompt_length
    pacer.resume(1)
    assert len(list(running)) == 30

    async def complete() -> list:
        return [event async for event in decoder.generate(decode_request("hi", 5))]

    events = asyncio.run(complete())
    # tokens decoded while the consumer was away travel together: 5 tokens in at most 5 events
    assert 1 <= len(events) <= 5 and events[-1].finish_reason == "length" and events[-1].completion_tokens == 5
    assert decoder.info()["active_streams"] == 0


def test_tokens_already_decoded_leave_in_one_event(chat_tokenizer, make_engine):
    """The consumer fell behind: every token queued by then goes in one event (up to the cap), in
    order, with the same text, and the count and finish reason of the last."""
    chat_model = build_model(chat_tokenizer)
    engine = make_engine(chat_model)
    runtime = LLMRuntime(chat_model, chat_tokenizer, decode_loop=engine)
    ids = runtime.chat_template([{"role": "user", "content": "hello"}])
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    expected = runtime.generate(input_ids=ids, params=params)
    stream = runtime.stream(input_ids=ids, params=params)
    for _ in range(int(WAIT_S / 0.01)):  # the engine decodes all 6 while nobody reads
        if stream.released:
            break
        threading.Event().wait(0.01)
    events = llm_deployment._next_events(stream, object())
    assert len(events) == 6 and events[-1].finish_reason == "length"
    assert "".join(e.text for e in events) == expected.text
    assert [e.token_id for e in events] == expected.token_ids
    assert llm_deployment._next_events(stream, object()) == []


def test_active_streams_count_a_cancelled_stream_until_the_engine_lets_go(chat_tokenizer, make_engine):
    chat_model = build_model(chat_tokenizer)
    pacer = Pacer(2)
    engine = make_engine(chat_model, on_step=pacer)
    runtime = LLMRuntime(chat_model, chat_tokenizer, decode_loop=engine)
    decoder = LLMDecoder({"llm": {"threads": 1}}, runtime_factory=lambda _config: runtime)

    async def drop_mid_decode() -> dict:
        events = decoder.generate(decode_request("hello"))
        await events.__anext__()
        await asyncio.get_running_loop().run_in_executor(None, pacer.wait_paused, 2)
        await events.aclose()  # the client went away while the engine is paused after step 2
        return decoder.info()

    held = asyncio.run(drop_mid_decode())
    # The engine has not reached a step boundary since: the request still holds its row, and /health says so.
    assert (held["engine_stats"]["active"], held["engine_stats"]["running"], held["active_streams"]) == (1, 1, 1)
    pacer.resume(2)
    # The cancelled request is dropped before the next step; a request completing after it proves it.
    ids = runtime.chat_template([{"role": "user", "content": "b"}])
    assert len(list(engine.run(runtime.embed(ids).unsqueeze(0), GREEDY, 2, NO_EOS))) == 2
    info = decoder.info()
    assert (info["active_streams"], info["engine_stats"]["running"], info["engine_stats"]["cancelled"]) == (0, 0, 1)


def test_stream_interval_sends_the_first_token_alone_then_groups(chat_tokenizer, make_engine):
    """`llm.stream_interval: 3`: the first token leaves at once (TTFT), then events of at least 3
    tokens (the last may be shorter), and the text is the same as token by token."""
    chat_model = build_model(chat_tokenizer)
    engine = make_engine(chat_model)
    runtime = LLMRuntime(chat_model, chat_tokenizer, decode_loop=engine)
    decoder = LLMDecoder({"llm": {"threads": 1, "stream_interval": 3}}, runtime_factory=lambda _config: runtime)
    one_by_one = LLMDecoder({"llm": {"threads": 1}}, runtime_factory=lambda _config: runtime)

    async def collect(deployment) -> list:
        return [event async for event in deployment.generate(decode_request("hello", 8))]

    grouped, single = asyncio.run(collect(decoder)), asyncio.run(collect(one_by_one))
    counts = [event.completion_tokens for event in grouped]
    assert counts[0] == 1 and counts[-1] == 8 and grouped[-1].finish_reason == "length"
    assert all(later - earlier >= 3 for earlier, later in zip(counts, counts[1:-1]))
    assert len(grouped) <= 1 + -(-7 // 3)
    assert "".join(e.text for e in grouped) == "".join(e.text for e in single)
