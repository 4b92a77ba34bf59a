"""Tiny random models shared by the unit tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_HIDDEN = 32  # the fusion tests' tiny LLM hidden size (tests/unit/conftest.py's `model`)


def frozen_tiny_llama(vocab_size: int, hidden: int = TINY_HIDDEN, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama, frozen, whose outputs react to its inputs (initializer_range 0.3), so that
    gradients reach a projector trained in front of it."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)
