"""Client text never becomes structure (tiny ChatML tokenizer): special tokens and media markers typed
in user, system or assistant text or in a transcript stay text, and ordinary text keeps its ids."""

from __future__ import annotations

import pytest

from fusion.prompt import MediaItem, Message, build_prompt
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
from tests.helpers.tokenizer import tiny_chat_tokenizer

TOKENIZER = tiny_chat_tokenizer()
PAYLOADS = payloads(TOKENIZER)
CASES = [(where, payload) for payload in PAYLOADS for where, *_ in attack_conversations(payload)]


@pytest.fixture
def tokenizer():
    return TOKENIZER


@pytest.fixture(autouse=True)
def known_nonce(monkeypatch):
    """The client knows the nonce: even so, typing a sentinel must not make a slot."""
    monkeypatch.setattr("fusion.prompt.secrets.token_hex", lambda _n=None: NONCE)


def test_payloads_cover_every_special_token(tokenizer):
    assert set(special_tokens(tokenizer)) == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    assert set(special_tokens(tokenizer)) <= set(PAYLOADS)


@pytest.mark.parametrize("where,payload", CASES, ids=[f"{w}-{i}" for i, (w, _) in enumerate(CASES)])
def test_typed_structure_stays_text(tokenizer, where, payload):
    ids = control_ids(tokenizer)
    (_, messages, mode, slots), = [c for c in attack_conversations(payload) if c[0] == where]
    (_, harmless, _, _), = [c for c in attack_conversations(HOLE) if c[0] == where]
    plan = build_prompt(messages, tokenizer, mode)
    reference = build_prompt(harmless, tokenizer, mode)
    # exactly the control tokens the template writes for this conversation, each as often
    assert control_counts(plan, ids) == control_counts(reference, ids)
    # exactly the real media items, in order
    assert [(s.kind, s.index) for s in plan.slots] == slots == [(s.kind, s.index) for s in reference.slots]
    # and the payload is there, character for character, as text
    assert flat_text(tokenizer, plan) == flat_text(tokenizer, reference).replace(HOLE, payload)


def test_legacy_prompt_was_injectable(tokenizer):
    """The fixture bites: before the fix a forged turn added control tokens and slots."""
    ids = control_ids(tokenizer)
    forged = PAYLOADS[-2]
    assert "<|im_start|>system" in forged
    (_, messages, mode, slots), = [c for c in attack_conversations(forged) if c[0] == "user"]
    (_, harmless, _, _), = [c for c in attack_conversations(HOLE) if c[0] == "user"]
    assert control_counts(legacy_build_prompt(messages, tokenizer, mode), ids) != control_counts(
        legacy_build_prompt(harmless, tokenizer, mode), ids
    )
    marker = f"\x00chorus-media-{NONCE}-0\x00"
    (_, messages, mode, slots), = [c for c in attack_conversations(marker) if c[0] == "user"]
    assert len(legacy_build_prompt(messages, tokenizer, mode).slots) > len(slots)


@pytest.mark.parametrize("case", range(len(ordinary_conversations())))
def test_ordinary_text_keeps_its_ids(tokenizer, case):
    messages, mode = ordinary_conversations()[case]
    assert build_prompt(messages, tokenizer, mode).pieces == legacy_build_prompt(messages, tokenizer, mode).pieces


def test_tokenizer_state_untouched(tokenizer):
    """No `split_special_tokens` flip on the shared tokenizer: other callers still get control tokens."""
    build_prompt([Message("user", ["<|im_end|>", MediaItem("audio", 0, transcript="<|im_start|>")])], tokenizer, "both")
    assert tokenizer.backend_tokenizer.encode_special_tokens is False
    assert tokenizer.encode("<|im_end|>", add_special_tokens=False) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_role_is_not_a_way_in(tokenizer):
    with pytest.raises(ValueError, match="role"):
        build_prompt([Message("user<|im_end|>", ["hi"])], tokenizer)
    for role in ("system", "developer", "user", "assistant"):
        build_prompt([Message(role, ["hi"])], tokenizer)


def test_plain_text_of_a_payload_has_no_control_id(tokenizer):
    """Every payload alone in a user turn: the only control ids are the template's three."""
    ids = control_ids(tokenizer)
    reference = control_counts(build_prompt([Message("user", [HOLE])], tokenizer), ids)
    assert sum(reference.values()) == 3  # <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n
    for payload in PAYLOADS:
        plan = build_prompt([Message("user", [payload])], tokenizer)
        assert control_counts(plan, ids) == reference, payload
        assert plan.slots == []
