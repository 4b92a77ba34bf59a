"""Explanations on the packaged SmolLM2 (real weights, no Ray): an input the answer copies is one it
rested on (a negative ablation delta), an unrelated one is not."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from fusion.attribution import plan_map
from fusion.prompt import MediaItem, Message, build_prompt
from modalities.llm.explain import explain, load_explainer
from modalities.llm.runtime import resolve_model_source

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packaged():
    from modalities.llm import prepare_llm

    prepare_llm()
    source = resolve_model_source("packaged")
    return AutoTokenizer.from_pretrained(source), load_explainer(source)


def _explain(packaged, messages, answer, modes=None):
    tokenizer, model = packaged
    plan = build_prompt(messages, tokenizer, modes=modes or {})
    prompt = model.get_input_embeddings()(torch.tensor(plan.token_ids())).unsqueeze(0)
    ids = tokenizer.encode(answer, add_special_tokens=False)
    return explain(model, prompt, ids, plan_map(plan, {}, {}).kinds)


def test_the_order_number_the_answer_copies_from_the_transcript(packaged):
    messages = [Message("user", ["What order number did I say?", MediaItem("audio", 0, transcript="My order number is QX4821.")])]
    result = _explain(packaged, messages, "You said your order number is QX4821.", {"audio": "transcript"})
    assert result.ablation_delta["audio"] < -2.0
    assert sum(result.attention_share.values()) == pytest.approx(1.0)


def test_an_unrelated_note_is_not_what_the_answer_rested_on(packaged):
    messages = [Message("user", ["What is the capital of France?", MediaItem("audio", 0, transcript="The weather is mild today.")])]
    result = _explain(packaged, messages, "The capital of France is Paris.", {"audio": "transcript"})
    # without it the answer is no less likely (here more: the note distracts the 135M model)
    assert result.ablation_delta["audio"] > -0.5
    assert result.ablation_delta["text"] < -2.0  # the question is what the answer rests on
