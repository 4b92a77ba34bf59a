"""Evaluation helpers: WER normalisation, and batched greedy decoding equals one-by-one decoding."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fusion.evaluate import greedy_batch, normalize, wer, word_errors


def test_wer_ignores_case_and_punctuation():
    assert normalize('"Where is my parcel?" she asked.') == ["where", "is", "my", "parcel", "she", "asked"]
    assert word_errors("Where is my parcel?", "where is my parcel") == (0, 4)
    assert word_errors("where is my parcel", "where my red parcel now") == (3, 4)  # "is" deleted, "red" and "now" inserted
    assert wer(["a b c d", "e f"], ["a b c d", ""]) == 2 / 6
    assert word_errors("", "extra words") == (2, 0)


def test_batched_greedy_equals_unbatched():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.3)
    model = LlamaForCausalLM(config).eval()
    prompts = [torch.randn(n, 32) * 0.3 for n in (3, 7, 5)]
    batched = greedy_batch(model, prompts, max_new_tokens=6, eos_ids={49})
    for prompt, ids in zip(prompts, batched):
        alone = greedy_batch(model, [prompt], max_new_tokens=6, eos_ids={49})[0]
        assert ids == alone
        # and the same as transformers' own greedy loop on that prompt
        out = model.generate(inputs_embeds=prompt.unsqueeze(0), max_new_tokens=6, do_sample=False, eos_token_id=49, pad_token_id=0)
        assert out[0].tolist()[: len(ids)] == ids
