"""The token loop: prefill from `inputs_embeds`, then one token per step against a KV cache.

`DecodeLoop` is the small interface the runtime streams through; `EagerDecodeLoop` serves one
sequence at a time with a transformers `DynamicCache` and works for any causal LM. The
continuous-batching engine (`modalities.llm.engine.batched.BatchedEngine`, Llama-family models) implements
the same `run`: concurrent requests share one batched forward per step, in a slot-based KV cache.

Why DynamicCache: a StaticCache pre-allocates `max_context` positions per layer (for SmolLM2 at 8k
context ~0.4 GB per request) and, without torch.compile, attends over all of them every step; its
advantage only appears once the step is compiled (not done here; the batched engine grows its slot
cache by doubling instead).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn
from transformers import DynamicCache

from modalities.llm.sampling import AnswerSampler, SamplingParams

# Only the last position's logits are needed; skipping the rest avoids a [L, vocab] matmul in prefill.
LAST_POSITION_ONLY = 1


class DecodeLoop(Protocol):
    def run(
        self,
        inputs_embeds: torch.Tensor,
        params: SamplingParams | AnswerSampler,
        max_new_tokens: int,
        eos_token_ids: frozenset[int],
    ) -> Iterator[int]:
        """Yield generated token ids for one prompt (`params` may be an `AnswerSampler`).

        inputs_embeds: `[1, L, H]` on the model's device and dtype.
        Stops after yielding an EOS id or `max_new_tokens` ids; the consumer may stop earlier
        (closing the iterator releases the sequence's cache).
        """
        ...


class EagerDecodeLoop:
    """One sequence at a time, eager PyTorch, KV cache in a `DynamicCache`."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        # transformers 5.x renames `past_key_values` to `cache` (both accepted until 5.40).
        forward_params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"

    def _logits(self, cache: DynamicCache, **inputs: torch.Tensor) -> torch.Tensor:
        """`[V]` next-token logits after feeding `inputs` (input_ids or inputs_embeds)."""
        output = self._model(**inputs, **{self._cache_kwarg: cache}, use_cache=True, logits_to_keep=LAST_POSITION_ONLY)
        return output.logits[0, -1]

    @torch.inference_mode()
    def run(
        self,
        inputs_embeds: torch.Tensor,
        params: SamplingParams | AnswerSampler,
        max_new_tokens: int,
        eos_token_ids: frozenset[int],
    ) -> Iterator[int]:
        shape = tuple(inputs_embeds.shape)
        assert len(shape) == 3 and shape[0] == 1, f"expected [1, L, H], got {shape}"
        assert max_new_tokens >= 1, max_new_tokens
        cache = DynamicCache(config=self._model.config)
        sampler = params if isinstance(params, AnswerSampler) else AnswerSampler(params)
        sampler.start(inputs_embeds.device, max_new_tokens)
        logits = self._logits(cache, inputs_embeds=inputs_embeds)
        for step in range(max_new_tokens):
            token_id = sampler.choose(logits)  # the one host sync per step: streaming needs the id now
            yield token_id
            if token_id in eos_token_ids or step == max_new_tokens - 1:
                return
            token = torch.tensor([[token_id]], dtype=torch.long, device=logits.device)
            logits = self._logits(cache, input_ids=token)
