"""Answer agreement: the word-F1 metric and the request-only prompts for each mode."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fusion.agreement import agreement, request_embeds, word_f1
from fusion.projectors import build_projector
from fusion.prompt import MediaItem, Message, build_prompt
from tests.helpers.tokenizer import tiny_chat_tokenizer


def test_word_f1():
    assert word_f1("Your order ships today.", "your ORDER ships today") == 1.0
    assert word_f1("", "") == 1.0
    assert word_f1("refund", "") == 0.0
    assert word_f1("a b c d", "a b x y") == pytest.approx(0.5)
    assert word_f1("a a b", "a b b") == pytest.approx(2 / 3)  # multiset overlap, not set


def test_agreement_means_and_exact_rate():
    figures = agreement(["a b", "c d", "e"], ["a b", "c x", "f"])
    assert figures["exact"] == pytest.approx(1 / 3, abs=1e-4)
    assert figures["word_f1"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-4)
    with pytest.raises(AssertionError):
        agreement(["a"], [])


def test_request_prompts_per_mode():
    tokenizer = tiny_chat_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    projector = build_projector("stack4_swiglu", 16, 32).eval()
    features = torch.randn(10, 16)  # 10 frames -> 3 soft tokens (padded to 12)
    text = request_embeds(model, tokenizer, "transcript", text="where is my order")
    heard = request_embeds(model, tokenizer, "transcript", transcript="where is my order")
    embed = request_embeds(model, tokenizer, "embed", projector=projector, features=features)
    assert text.shape[1] == heard.shape[1] == embed.shape[1] == 32
    # the cascade inserts the transcript as the bare user text: a perfect transcript = the reference prompt
    assert torch.equal(heard, text)
    assert not torch.equal(request_embeds(model, tokenizer, "transcript", transcript="where is my parcel"), text)
    # embed: the audio delimiters around 3 projected tokens (10 frames, stack 4, zero-padded)
    plan = build_prompt([Message("user", [MediaItem("audio", 0)])], tokenizer, "embed")
    assert embed.shape[0] == plan.num_text_tokens + 3
    with torch.no_grad():
        projected = projector(features.unsqueeze(0))[0]
    rows = [i for i in range(embed.shape[0]) if torch.allclose(embed[i], projected[0])]
    assert len(rows) == 1 and torch.allclose(embed[rows[0] : rows[0] + 3], projected)
