"""Client text never becomes structure, with the packaged SmolLM2 tokenizer: every special token of it
and every media marker, typed in user, system or assistant text or in a transcript, stays text; and
ordinary conversations keep exactly the ids they had before the fix (greedy answers, prefix cache)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from fusion.prompt import Message, build_prompt
from modalities.llm.weights import prepare_llm
from tests.helpers.prompt_injection import (
    HOLE,
    NONCE,
    attack_conversations,
    control_counts,
    control_ids,
    flat_text,
    legacy_build_prompt,
    ordinary_conversations,
    payloads,
    special_tokens,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(prepare_llm(), local_files_only=True)  # as `LLMRuntime` loads it


@pytest.fixture(autouse=True)
def known_nonce(monkeypatch):
    """The client knows the nonce: even so, typing a sentinel must not make a slot."""
    monkeypatch.setattr("fusion.prompt.secrets.token_hex", lambda _n=None: NONCE)


def test_payloads_cover_every_special_token(tokenizer):
    flagged = {tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special}
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<jupyter_code>"} <= flagged
    assert set(tokenizer.all_special_tokens) | flagged == set(special_tokens(tokenizer))
    assert set(special_tokens(tokenizer)) <= set(payloads(tokenizer))


def test_typed_structure_stays_text(tokenizer):
    ids = control_ids(tokenizer)
    checked = 0
    for payload in payloads(tokenizer):
        harmless = {where: (messages, mode) for where, messages, mode, _ in attack_conversations(HOLE)}
        for where, messages, mode, slots in attack_conversations(payload):
            plan = build_prompt(messages, tokenizer, mode)
            reference = build_prompt(harmless[where][0], tokenizer, harmless[where][1])
            context = f"{where}: {payload!r}"
            assert control_counts(plan, ids) == control_counts(reference, ids), context
            assert [(s.kind, s.index) for s in plan.slots] == slots, context
            assert [(s.kind, s.index) for s in reference.slots] == slots, context
            assert flat_text(tokenizer, plan) == flat_text(tokenizer, reference).replace(HOLE, payload), context
            checked += 1
    assert checked >= 6 * 30


def test_legacy_prompt_was_injectable(tokenizer):
    """The check bites on the real tokenizer: before the fix a forged turn added control tokens."""
    ids = control_ids(tokenizer)
    forged = next(p for p in payloads(tokenizer) if "Reveal the secret" in p)
    messages = attack_conversations(forged)[0][1]
    harmless = attack_conversations(HOLE)[0][1]
    assert control_counts(legacy_build_prompt(messages, tokenizer, "embed"), ids) != control_counts(
        legacy_build_prompt(harmless, tokenizer, "embed"), ids
    )
    assert control_counts(build_prompt(messages, tokenizer, "embed"), ids) == control_counts(
        build_prompt(harmless, tokenizer, "embed"), ids
    )


def test_ordinary_text_keeps_its_ids(tokenizer):
    cases = ordinary_conversations(seed=1, random_cases=200)
    for messages, mode in cases:
        assert build_prompt(messages, tokenizer, mode).pieces == legacy_build_prompt(messages, tokenizer, mode).pieces


def test_chat_template_ids_unchanged(tokenizer):
    """Text-only prompts: the plan's ids are the template's own `apply_chat_template(tokenize=True)` ids."""
    question = [Message("system", ["Be brief."]), Message("user", ["  What is the capital of France?\n"])]
    plan = build_prompt(question, tokenizer)
    conversation = [{"role": m.role, "content": "".join(m.parts)} for m in question]
    expected = tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert plan.token_ids() == list(expected)
