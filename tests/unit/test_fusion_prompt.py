"""Projector shapes and padding; prompt plans and splicing for several media orders."""

from __future__ import annotations

import pytest
import torch

from fusion.projectors import MLP2xGELU, StackSwiGLU, build_projector
from fusion.prompt import MediaItem, MediaSlot, Message, build_prompt, splice
from tests.helpers.tokenizer import tiny_chat_tokenizer

HIDDEN = 16


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_chat_tokenizer()


def test_build_projector_by_key():
    assert isinstance(build_projector("mlp2x_gelu", 8, HIDDEN), MLP2xGELU)
    audio = build_projector("stack4_swiglu", 8, HIDDEN)
    assert isinstance(audio, StackSwiGLU) and audio.stack == 4


def test_unknown_projector_lists_known_kinds():
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        build_projector("qformer", 8, HIDDEN)


def test_vision_projector_shape():
    out = MLP2xGELU(12, HIDDEN)(torch.randn(2, 49, 12))
    assert out.shape == (2, 49, HIDDEN)


@pytest.mark.parametrize("frames,expected", [(8, 2), (9, 3), (1, 1), (12, 3)])
def test_stack_projector_pads_to_multiple(frames, expected):
    proj = StackSwiGLU(6, HIDDEN, stack=4)
    out = proj(torch.randn(1, frames, 6))
    assert out.shape == (1, expected, HIDDEN)
    assert proj.num_output_tokens(frames) == expected


def test_stack_padding_is_zeros():
    """The padded tail must not change the tokens made from complete groups."""
    torch.manual_seed(0)
    proj = StackSwiGLU(6, HIDDEN, stack=4)
    frames = torch.randn(1, 10, 6)
    full = proj(frames)
    manual = proj(torch.cat([frames, torch.zeros(1, 2, 6)], dim=1))
    assert torch.allclose(full, manual)
    assert torch.allclose(full[:, :2], proj(frames[:, :8]))


def _render(tokenizer, plan):
    return "".join(
        f"[{p.kind}{p.index}]" if isinstance(p, MediaSlot) else tokenizer.decode(p) for p in plan.pieces
    )


@pytest.mark.parametrize(
    "parts,expected_order",
    [
        (["Look: ", MediaItem("image", 0), " and listen ", MediaItem("audio", 1)], ["image", "audio"]),
        ([MediaItem("audio", 0), MediaItem("image", 1), " what?"], ["audio", "image"]),
        (["hi ", MediaItem("image", 0), MediaItem("image", 1)], ["image", "image"]),
    ],
)
def test_plan_keeps_media_order(tokenizer, parts, expected_order):
    plan = build_prompt([Message("user", parts)], tokenizer, audio_mode="embed")
    assert [s.kind for s in plan.slots] == expected_order
    rendered = _render(tokenizer, plan)
    assert rendered.startswith("<|im_start|>user\n")
    assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")
    for slot in plan.slots:
        assert f"<{slot.kind}>[{slot.kind}{slot.index}]</{slot.kind}>" in rendered


def test_transcript_mode_inlines_text(tokenizer):
    item = MediaItem("audio", 0, transcript="where is my parcel")
    plan = build_prompt([Message("user", ["Caller: ", item])], tokenizer, audio_mode="transcript")
    assert plan.slots == []
    assert "Caller: where is my parcel<|im_end|>" in tokenizer.decode(plan.token_ids())


def test_both_mode_has_slot_and_transcript(tokenizer):
    item = MediaItem("audio", 0, transcript="refund please")
    plan = build_prompt([Message("user", [item])], tokenizer, audio_mode="both")
    assert [s.kind for s in plan.slots] == ["audio"]
    assert "(transcript: refund please)" in _render(tokenizer, plan)


def test_transcript_mode_requires_transcript(tokenizer):
    with pytest.raises(ValueError, match="transcript"):
        build_prompt([Message("user", [MediaItem("audio", 0)])], tokenizer, audio_mode="transcript")


def test_multi_turn_history_is_rendered(tokenizer):
    messages = [
        Message("system", ["Be brief."]),
        Message("user", ["My order is late."]),
        Message("assistant", ["Sorry! What is the order number?"]),
        Message("user", ["It is 1234 ", MediaItem("image", 0)]),
    ]
    text = _render(tokenizer, build_prompt(messages, tokenizer, audio_mode="embed"))
    assert text.index("Be brief.") < text.index("order is late") < text.index("order number") < text.index("1234")


def test_splice_positions_and_mask(tokenizer):
    parts = ["A", MediaItem("audio", 0), "B", MediaItem("image", 1), "C"]
    plan = build_prompt([Message("user", parts)], tokenizer, audio_mode="embed")
    text_pieces = [p for p in plan.pieces if isinstance(p, list)]
    text_embeds = [torch.full((len(ids), HIDDEN), float(i)) for i, ids in enumerate(text_pieces)]
    media = {0: torch.full((3, HIDDEN), -1.0), 1: torch.full((5, HIDDEN), -2.0)}
    embeds, mask, counts = splice(plan, text_embeds, media)

    total = plan.num_text_tokens + 3 + 5
    assert embeds.shape == (1, total, HIDDEN) and mask.shape == (1, total) and bool(mask.all())
    assert counts == {0: 3, 1: 5}
    # Walk the plan: every row must come from the right source, in order.
    row, text_i = 0, 0
    for piece in plan.pieces:
        if isinstance(piece, MediaSlot):
            n, value = (3, -1.0) if piece.index == 0 else (5, -2.0)
        else:
            n, value = len(piece), float(text_i)
            text_i += 1
        assert torch.all(embeds[0, row : row + n] == value)
        row += n
    assert row == total


def test_splice_rejects_mismatches(tokenizer):
    plan = build_prompt([Message("user", ["x", MediaItem("image", 0)])], tokenizer, audio_mode="embed")
    text_embeds = [torch.zeros(len(p), HIDDEN) for p in plan.pieces if isinstance(p, list)]
    with pytest.raises(AssertionError):
        splice(plan, text_embeds, {0: torch.zeros(4, HIDDEN + 1)})
    with pytest.raises(AssertionError):
        splice(plan, text_embeds, {})
    with pytest.raises(AssertionError):
        splice(plan, text_embeds, {0: torch.zeros(4, HIDDEN, dtype=torch.float64)})
