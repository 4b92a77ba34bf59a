"""What the batched scheduler runs (`Forward`: torch's `LlamaForward` or `onnx.OnnxForward`) and what
it reports about itself (`EngineStats`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from modalities.llm.engine.slots import SlotCache


class Forward(Protocol):
    """What the scheduler runs: `LlamaForward` (torch) or `onnx.OnnxForward` (ONNX Runtime)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    max_positions: int

    def prefill(
        self, prompts: list[torch.Tensor], cache: SlotCache, first_row: int, cached: list[int] | None = None
    ) -> torch.Tensor: ...

    def decode(
        self, token_ids: torch.Tensor, positions: torch.Tensor, span: int, cache: SlotCache, first_row: int = 0
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine: requests decoding, being prefilled and waiting, and counters since start."""

    active: int  # rows decoding now
    prefilling: int  # requests whose prompt is being prefilled (each holds a row)
    queued: int  # requests waiting for a row
    running: int  # requests holding a row: active + prefilling
    max_slots: int
    cache_capacity: int  # positions per row currently allocated (0 when idle)
    cache_bytes: int  # K/V memory the slot cache holds now
    steps: int  # batched decode steps run
    prefill_chunks: int  # prefill forwards run
    completed: int  # requests that finished, were cancelled or failed
    cancelled: int  # of those, cancelled by their consumer before their last token
    prompt_tokens: int  # prompt positions prefilled or taken from the prefix cache
    prefix_hit_tokens: int  # of those, taken from the prefix cache (0 with the cache off)
    prefix_cache_bytes: int  # K/V held by the prefix cache now
    alive: bool  # False once the engine thread has died or the engine was closed (requests then fail)
