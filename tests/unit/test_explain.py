"""Explanations (`modalities.llm.explain`, `fusion.attribution`) on a tiny random Llama.

The figures are checked against plain forward passes: row 0's answer log-prob is the model's own, and
an ablation equals deleting the kind's tokens from the prompt (the masked and renumbered row is the
shorter prompt, exactly). Shares and relevances sum to 1. Whether an input the answer copies gets a
negative delta needs a model that copies: tests/e2e/test_explain_e2e.py, on the packaged weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fusion.attribution import plan_map, segment_relevance
from fusion.prompt import MediaItem, Message, build_prompt
from modalities.llm.explain import ATTENTION, explain, register_attention
from serve.services.explanations import with_boxes
from tests.helpers.tokenizer import tiny_chat_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_chat_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    register_attention()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3,
    )
    config._attn_implementation = ATTENTION
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def _plain_logprob(model, prompt: torch.Tensor, answer: list[int]) -> float:
    """log p(answer | prompt embeds) by an ordinary forward pass (the model's own causal attention)."""
    embed = model.get_input_embeddings()
    sequence = torch.cat([prompt, embed(torch.tensor(answer[:-1])).unsqueeze(0)], dim=1)
    with torch.inference_mode():
        logits = model(inputs_embeds=sequence).logits[0].log_softmax(-1)
    start = prompt.shape[1] - 1
    return sum(float(logits[start + i, token]) for i, token in enumerate(answer))


def _text_prompt(tokenizer, model):
    messages = [Message("system", ["Be brief."]), Message("user", ["My order is AB12. Where is it? It is late."])]
    plan = build_prompt(messages, tokenizer)
    prompt = model.get_input_embeddings()(torch.tensor(plan.token_ids())).unsqueeze(0)
    return plan, prompt


def test_row_zero_is_the_plain_forward_and_an_ablation_is_the_prompt_without_those_tokens(tokenizer, model):
    model.config._attn_implementation = "eager"  # the plain passes: transformers' own attention
    plan, prompt = _text_prompt(tokenizer, model)
    answer = tokenizer.encode("AB12 is late", add_special_tokens=False)
    mapped = plan_map(plan, {}, {})
    assert set(mapped.kinds) == {"text", "instructions"}
    plain = _plain_logprob(model, prompt, answer)
    deleted = {}
    for kind, positions in mapped.kinds.items():
        kept = [i for i in range(prompt.shape[1]) if i not in set(positions)]
        deleted[kind] = _plain_logprob(model, prompt[:, kept], answer) - plain
    model.config._attn_implementation = ATTENTION
    result = explain(model, prompt, answer, mapped.kinds)
    assert result.answer_logprob == pytest.approx(plain, abs=1e-3)
    for kind in mapped.kinds:
        assert result.ablation_delta[kind] == pytest.approx(deleted[kind], abs=1e-3)
    assert sum(result.attention_share.values()) == pytest.approx(1.0)
    assert all(0.0 <= share <= 1.0 for share in result.attention_share.values())
    assert result.rows == 3 and result.layers == 2 and result.answer_tokens == len(answer)


def test_segments_are_sentences_and_their_relevance_sums_to_one(tokenizer, model):
    plan, prompt = _text_prompt(tokenizer, model)
    mapped = plan_map(plan, {}, {})
    result = explain(model, prompt, tokenizer.encode("late", add_special_tokens=False), mapped.kinds)
    segments = segment_relevance(mapped.segments, result.position_mass.tolist())
    texts = [(s["kind"], s["message"], s["text"]) for s in segments]
    assert texts == [("instructions", 0, "Be brief."), ("text", 1, "My order is AB12."), ("text", 1, "Where is it?"),
                     ("text", 1, "It is late.")]
    user = "My order is AB12. Where is it? It is late."
    for s in segments[1:]:
        assert user[s["span"][0] : s["span"][1]].strip() == s["text"]
    assert sum(s["relevance"] for s in segments) == pytest.approx(1.0, abs=1e-4)
    # every kind position is in exactly one segment
    in_segments = sorted(p for s in mapped.segments for p in s.positions)
    assert in_segments == sorted(p for ps in mapped.kinds.values() for p in ps)


def test_embedded_audio_is_binned_and_a_transcript_split_into_words(tokenizer, model):
    messages = [Message("user", ["What did I say?", MediaItem("audio", 0, transcript="blue backpack please")])]
    plan = build_prompt(messages, tokenizer, modes={"audio": "both"})
    text = model.get_input_embeddings()(torch.tensor([t for p in plan.pieces if isinstance(p, list) for t in p]))
    soft = torch.randn(5, text.shape[-1])  # 5 soft tokens for 20 frames: 80 ms each
    pieces, cursor = [], 0
    for piece in plan.pieces:
        if isinstance(piece, list):
            pieces.append(text[cursor : cursor + len(piece)])
            cursor += len(piece)
        else:
            pieces.append(soft)
    prompt = torch.cat(pieces).unsqueeze(0)
    mapped = plan_map(plan, {0: 5}, {0: 20 / 50 / 5})
    assert len(mapped.kinds["audio"]) == 5 + len(tokenizer.encode("blue backpack please", add_special_tokens=False))
    result = explain(model, prompt, tokenizer.encode("blue", add_special_tokens=False), mapped.kinds)
    segments = segment_relevance(mapped.segments, result.position_mass.tolist())
    bins = [s for s in segments if "start_s" in s]
    assert [(b["start_s"], b["end_s"]) for b in bins] == [(0.0, 0.08), (0.08, 0.16), (0.16, 0.24), (0.24, 0.32), (0.32, 0.4)]
    assert [s["text"] for s in segments if s["kind"] == "audio" and "text" in s] == ["blue", "backpack", "please"]
    assert set(result.attention_share) == {"text", "audio"}
    assert sum(result.attention_share.values()) == pytest.approx(1.0)


def test_ocr_lines_and_image_patches_get_boxes():
    explanation = {"segments": [
        {"kind": "image", "media": 0, "line": 1, "text": "TOTAL 9.50", "relevance": 0.5},
        {"kind": "image", "media": 1, "patch": [1, 0], "grid": [2, 2], "relevance": 0.5},
        {"kind": "text", "message": 0, "span": [0, 3], "text": "Hi.", "relevance": 0.0},
    ]}
    details = {
        0: {"lines": [{"text": "SHOP", "row": 0, "box": [[0, 0], [50, 0], [50, 10], [0, 10]]},
                      {"text": "TOTAL", "row": 1, "box": [[2, 20], [30, 20], [30, 30], [2, 30]]},
                      {"text": "9.50", "row": 1, "box": [[40, 21], [60, 21], [60, 31], [40, 31]]}]},
        1: {"width": 100, "height": 80},
    }
    boxed = with_boxes(explanation, details)["segments"]
    assert boxed[0]["box"] == [2, 20, 60, 31]
    assert boxed[1]["box"] == [0, 40, 50, 80]
    assert "box" not in boxed[2]


def test_nothing_to_explain_is_refused(tokenizer, model):
    plan, prompt = _text_prompt(tokenizer, model)
    with pytest.raises(ValueError):
        explain(model, prompt, [], plan_map(plan, {}, {}).kinds)


def test_the_answer_is_scored_not_read(tokenizer, model):
    """The answer's last token only scores: an answer of one token needs no extra position."""
    plan, prompt = _text_prompt(tokenizer, model)
    one = explain(model, prompt, [int(np.int64(5))], plan_map(plan, {}, {}).kinds)
    assert one.answer_tokens == 1 and np.isfinite(one.answer_logprob)
