"""Automatic prefix caching: block keys, the byte-bounded LRU, and the batched engine reusing cached
prefixes with the same tokens as computing them (tiny random Llama, greedy text that wanders)."""

from __future__ import annotations

import pytest
import torch

from modalities.llm.engine import BatchedEngine, SlotCache
from modalities.llm.engine.prefix import PrefixCache
from modalities.llm.runtime import LLMConfig, build_decode_loop
from tests.unit.test_llm import VOCAB_SIZE, build_tokenizer
from tests.unit.test_llm_engine import GREEDY, NEW_TOKENS, NO_EOS, Pacer, eager_tokens, lively_model

BLOCK = 8
SHARED = 19  # a shared prefix of 2 full blocks and 3 positions more
TAILS = (6, 1, 13, 30)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return lively_model(tokenizer)  # the engine tests' tiny Llama: greedy text wanders


def embed(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.get_input_embeddings()(ids.view(1, -1))


@pytest.fixture(scope="module")
def chats(model) -> list[torch.Tensor]:
    """Prompts that share their first SHARED tokens (a system prompt), then differ."""
    generator = torch.Generator().manual_seed(2)
    shared = torch.randint(0, VOCAB_SIZE, (SHARED,), generator=generator)
    return [embed(model, torch.cat([shared, torch.randint(0, VOCAB_SIZE, (n,), generator=generator)])) for n in TAILS]


def kv_block(value: float, layers: int = 2, tokens: int = BLOCK) -> torch.Tensor:
    return torch.full((layers, 2, 1, tokens, 4), float(value))


BLOCK_BYTES = kv_block(0.0).nelement() * 4


@pytest.fixture
def engines():
    made: list[BatchedEngine] = []
    yield made
    for engine in made:
        engine.close()


# --- keys and the LRU --------------------------------------------------------------------------


def test_keys_chain_whole_prefixes_and_skip_a_partial_block():
    cache = PrefixCache(BLOCK_BYTES, block_tokens=4)
    prompt = torch.randn(1, 14, 6)
    keys = cache.keys(prompt)
    assert len(keys) == 3  # positions 12..13 are no full block
    assert cache.keys(prompt.clone()) == keys
    later = prompt.clone()
    later[0, 9] += 1.0  # inside block 2
    assert cache.keys(later)[:2] == keys[:2] and cache.keys(later)[2] != keys[2]
    earlier = prompt.clone()
    earlier[0, 0, 0] = torch.nextafter(earlier[0, 0, 0], torch.tensor(10.0))  # one ulp, block 0
    assert all(a != b for a, b in zip(cache.keys(earlier), keys)), "a key names the whole prefix before it"
    assert len(cache.keys(prompt.to(torch.bfloat16))) == 3


def test_lookup_returns_the_longest_cached_chain_and_leaves_the_last_position():
    cache = PrefixCache(10 * BLOCK_BYTES, block_tokens=BLOCK)
    keys = [f"k{i}" for i in range(3)]
    cache.store(keys, 0, torch.cat([kv_block(i) for i in range(3)], dim=3))
    assert [b[0, 0, 0, 0, 0].item() for b in cache.lookup(keys, 3 * BLOCK + 1)] == [0.0, 1.0, 2.0]
    assert len(cache.lookup(keys, 3 * BLOCK)) == 2, "the last position is always computed"
    assert cache.lookup(["other", *keys[1:]], 3 * BLOCK + 1) == []
    assert cache.bytes == 3 * BLOCK_BYTES


def test_eviction_takes_the_leaves_before_the_shared_parents():
    cache = PrefixCache(3 * BLOCK_BYTES, block_tokens=BLOCK)
    chain = [f"c{i}" for i in range(4)]
    cache.store(chain, 0, torch.cat([kv_block(i) for i in range(4)], dim=3))
    assert len(cache.lookup(chain, 5 * BLOCK)) == 3 and cache.bytes == 3 * BLOCK_BYTES
    # Another chat reuses c0 and adds its own block: c2, the stalest leaf, goes.
    other = ["c0", "d1"]
    cache.store(other, 1, kv_block(9.0))
    assert len(cache.lookup(other, 3 * BLOCK)) == 2
    assert len(cache.lookup(chain, 5 * BLOCK)) == 2


def test_a_disabled_or_tiny_cache_keeps_nothing():
    cache = PrefixCache(BLOCK_BYTES - 1, block_tokens=BLOCK)
    cache.store(["a"], 0, kv_block(1.0))
    assert cache.lookup(["a"], 2 * BLOCK) == [] and cache.bytes == 0


# --- the engine --------------------------------------------------------------------------------


def test_reused_prefixes_give_the_tokens_computed_ones_do(model, chats, engines):
    engines.append(BatchedEngine(model, prefix_cache_bytes=2**20))
    engine = engines[0]
    expected = eager_tokens(model, chats)
    assert list(engine.run(chats[0], GREEDY, NEW_TOKENS, NO_EOS)) == expected[0]
    stats = engine.stats()
    assert stats.prefix_hit_tokens == 0 and stats.prefix_cache_bytes > 0
    # One at a time: each finds the shared blocks (2 x 8 positions) cached by the one before.
    for chat, tokens in zip(chats[1:], expected[1:]):
        assert list(engine.run(chat, GREEDY, NEW_TOKENS, NO_EOS)) == tokens
    stats = engine.stats()
    assert stats.prefix_hit_tokens == 2 * BLOCK * (len(chats) - 1)
    assert stats.prompt_tokens == sum(c.shape[1] for c in chats)
    # The same prompt again reuses every full block but the one holding its last position.
    again = chats[3]
    before = engine.stats().prefix_hit_tokens
    assert list(engine.run(again, GREEDY, NEW_TOKENS, NO_EOS)) == expected[3]
    assert engine.stats().prefix_hit_tokens - before == (again.shape[1] - 1) // BLOCK * BLOCK


def test_a_pack_mixes_prompts_with_and_without_a_cached_prefix(model, chats, engines):
    pacer = Pacer(1)
    engines.append(BatchedEngine(model, prefix_cache_bytes=2**20, on_step=pacer))
    engine = engines[0]
    fresh = embed(model, torch.randint(0, VOCAB_SIZE, (11,), generator=torch.Generator().manual_seed(3)))
    expected = eager_tokens(model, [chats[0], chats[1], fresh, chats[2]])
    first = engine.run(chats[0], GREEDY, NEW_TOKENS, NO_EOS)
    pacer.wait_paused(1)  # chats[0]'s blocks are cached now; the rest join in one pack
    rest = [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in (chats[1], fresh, chats[2])]
    pacer.resume(1)
    assert [list(s) for s in [first, *rest]] == expected
    assert engine.stats().prefix_hit_tokens == 2 * 2 * BLOCK


def test_the_runtime_config_turns_the_cache_on_by_default_and_off_with_zero(model):
    on = build_decode_loop(model, LLMConfig(model="unused"))
    off = build_decode_loop(model, LLMConfig(model="unused", prefix_cache_mib=0))
    try:
        assert on.prefix is not None and off.prefix is None
        assert off.stats().prefix_cache_bytes == 0
    finally:
        on.close()
        off.close()


def test_prefill_after_a_cached_prefix_gives_the_logits_and_kv_of_a_full_prefill(model, chats):
    forward = BatchedEngine(model).forward
    cache = SlotCache(
        forward.num_layers, forward.num_kv_heads, forward.head_dim, max_rows=2, max_length=64,
        dtype=torch.float32, device=torch.device("cpu"),
    )
    cache.reserve(2, 64)
    prompt = chats[3]
    length, past = prompt.shape[1], 2 * BLOCK
    with torch.inference_mode():
        whole = forward.prefill([prompt], cache, 0)
        cache.write(1, cache.read(0, 0, past))
        rest = forward.prefill([prompt[:, past:]], cache, 1, [past])
    torch.testing.assert_close(rest, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.read(1, 0, length), cache.read(0, 0, length), rtol=1e-5, atol=1e-5)


def test_a_cache_too_small_for_every_prefix_evicts_and_still_gives_the_same_tokens(model, chats, engines):
    """Three blocks of room for prompts that want up to six: blocks are evicted while others are
    reused, and every answer is still the full prefill's."""
    layers, kv_heads, head_dim = model.config.num_hidden_layers, model.config.num_key_value_heads, 16
    block_bytes = layers * 2 * kv_heads * BLOCK * head_dim * 4
    engines.append(BatchedEngine(model, max_slots=2, prefix_cache_bytes=3 * block_bytes))
    engine = engines[0]
    assert model.config.hidden_size // model.config.num_attention_heads == head_dim
    order = [chats[3], chats[0], chats[3], chats[2], chats[1], chats[3]]
    expected = eager_tokens(model, order)
    streams = [engine.run(p, GREEDY, NEW_TOKENS, NO_EOS) for p in order]  # 2 slots: the rest queue
    assert [list(s) for s in streams] == expected
    stats = engine.stats()
    assert 0 < stats.prefix_cache_bytes <= 3 * block_bytes
    assert stats.prefix_hit_tokens > 0
