"""SpecAugment on cached encoder frames: a fresh view of each training clip at every step.

The speech corpus caches Whisper's encoder output once per clip (`fusion.speech_data`), so without
this every epoch shows the projector the very same frames and it memorises the clips (training CE
falls far below held-out CE; docs/models-and-fusion.md). SpecAugment (Park et al., 2019) masks
spans of time and of channels; applied to encoder *outputs* rather than to the log-mel input it is
the cheap form Whisper fine-tuning and Q-Former connectors use (no encoder pass per step).

Per clip, drawn from a seeded `torch.Generator`:

- `speed`: frames resampled along time by a factor in `1 ± speed` (linear interpolation; the
  length changes, as a faster or slower speaker's would);
- `time_masks` spans of up to `time_width` frames (50 frames a second) set to the clip's mean frame;
- `channel_masks` spans of up to `channel_width` feature dimensions set to zero;
- Gaussian noise of `noise` × each dimension's standard deviation over the clip.

Only training turns are augmented; held-out losses and evaluation read the frames as cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class FeatureAugment(BaseModel):
    """How strongly to augment; the defaults are SpecAugment's LibriSpeech-basic policy scaled to 50 frames/s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speed: float = Field(0.1, ge=0, lt=1, description="Time-resampling factor drawn from 1 ± speed")
    time_masks: int = Field(2, ge=0, description="Time spans masked per clip")
    time_width: int = Field(10, ge=1, description="Longest masked time span, frames (50 a second)")
    channel_masks: int = Field(2, ge=0, description="Channel spans masked per clip")
    channel_width: int = Field(27, ge=1, description="Longest masked channel span, dimensions")
    noise: float = Field(0.1, ge=0, description="Gaussian noise, times each dimension's std over the clip")

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`frames [T, d]` → an augmented float32 copy `[T', d]` (T' = T unless `speed`)."""
        out = frames.float()
        length, dim = out.shape
        if self.speed > 0 and length > 1:
            factor = 1.0 + self.speed * (2 * _uniform(generator) - 1)
            new_length = max(1, round(length / factor))
            out = F.interpolate(out.T[None], size=new_length, mode="linear", align_corners=True)[0].T
            length = new_length
        out = out.clone()
        if self.time_masks:
            mean = out.mean(0)
            for _ in range(self.time_masks):
                start, width = _span(length, self.time_width, generator)
                out[start : start + width] = mean
        for _ in range(self.channel_masks):
            start, width = _span(dim, self.channel_width, generator)
            out[:, start : start + width] = 0.0
        if self.noise > 0:
            std = out.std(0, keepdim=True) if length > 1 else out.abs()
            out = out + self.noise * std * torch.randn(out.shape, generator=generator)
        return out


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _span(size: int, widest: int, generator: torch.Generator) -> tuple[int, int]:
    """A span of 0..min(widest, size) positions at a uniform start inside `size`."""
    width = int(torch.randint(0, min(widest, size) + 1, (), generator=generator))
    start = int(torch.randint(0, size - width + 1, (), generator=generator))
    return start, width


def with_views(
    examples: Sequence[Any], augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor], generator: torch.Generator
) -> list[Any]:
    """Copies of training turns (`fusion.batches.Example`) whose features are fresh augmented views."""
    return [replace(ex, features=augment(ex.features, generator)) for ex in examples]
