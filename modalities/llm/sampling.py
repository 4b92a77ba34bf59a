"""Next-token sampling, on the logits' own device.

Sampling uses a per-request `torch.Generator`: the same seed gives the same tokens (on the same
device and model), independent of any other request running in the process. The parameters
(`SamplingParams`, its limits) live torch-free in `modalities.llm.params`.
"""

from __future__ import annotations

import torch

from modalities.llm.params import SEED_RANGE, SamplingParams

__all__ = ["SEED_RANGE", "SamplingParams", "make_generator", "sample_next_token"]


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A generator for this request's random stream (None for greedy, which needs none)."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()  # nondeterministic, but still private to this request
    else:
        generator.manual_seed(params.seed)
    return generator


def sample_next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token.

    logits: `[V]` scores for the next position (any float dtype; computed in float32).
    Returns a 0-d long tensor on the logits' device (no host sync here; the caller decides when).
    """
    assert logits.dim() == 1, f"expected [V] logits, got {tuple(logits.shape)}"
    if params.greedy:
        return torch.argmax(logits)
    scaled = logits.float() / params.temperature
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        probs = _top_p_filter(probs, params.top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator)[0]


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the nucleus: `[V]` probabilities in, `[V]` unnormalised weights out."""
    sorted_probs, order = torch.sort(probs, descending=True)
    # A token stays if the mass *before* it is still short of top_p; so the top token always stays.
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(0, order, sorted_probs)
