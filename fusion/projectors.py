"""Projectors: encoder features → soft tokens in the LLM's embedding space.

Two families, chosen by a string key (`build_projector`):

- `mlp2x_gelu` — LLaVA-1.5's vision projector: Linear → GELU → Linear.
- `stack{k}_swiglu` — Ultravox's audio projector: stack k consecutive frames (zero-padded to a
  multiple of k), RMSNorm → Linear → SwiGLU → Linear. Stacking divides the token count by k, so a
  5 s clip (250 Whisper frames at 50 frames/s) becomes 250/k soft tokens.
- `whisperdec{k}` — DiVA's audio connector (`fusion.connector`): Whisper's text decoder reading the
  frames through one learned query per k frames (the same token count as `stack{k}_swiglu`).

Every projector's forward takes `(frames [B, T, in_dim], lengths=None)`: the clips' frame counts in
a zero-padded batch (the connector masks the padding; the others need not).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_STACK_RE = re.compile(r"^stack(\d+)_swiglu$")
_CONNECTOR_RE = re.compile(r"^whisperdec(\d+)$")
KNOWN_KINDS = ("mlp2x_gelu", "stack{k}_swiglu", "whisperdec{k}")


class MLP2xGELU(nn.Module):
    """Vision projector.

    forward: `[B, N, in_dim]` (CLIP patch features) → `[B, N, out_dim]` (LLM hidden size).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        assert features.shape[-1] == self.in_dim, f"expected last dim {self.in_dim}, got {tuple(features.shape)}"
        return self.linear_2(F.gelu(self.linear_1(features)))

    def num_output_tokens(self, num_input_frames: int) -> int:
        return num_input_frames


class StackSwiGLU(nn.Module):
    """Audio projector (Ultravox).

    forward: `[B, T, in_dim]` (Whisper frames, 50/s) → `[B, ceil(T / stack), out_dim]`.
    Frames are zero-padded at the end to a multiple of `stack` before stacking.
    """

    def __init__(self, in_dim: int, out_dim: int, stack: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        if stack < 1:
            raise ValueError(f"stack must be >= 1, got {stack}")
        self.in_dim, self.out_dim, self.stack = in_dim, out_dim, stack
        stacked = in_dim * stack
        hidden = hidden_dim or out_dim * 2
        self.norm = nn.RMSNorm(stacked)
        # SwiGLU splits the first projection in two halves: value and gate.
        self.linear_1 = nn.Linear(stacked, 2 * hidden, bias=False)
        self.linear_2 = nn.Linear(hidden, out_dim, bias=False)

    def forward(self, frames: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        # Zero frames past a clip's end only touch the stacked tokens past its end: `lengths` unneeded.
        assert frames.dim() == 3 and frames.shape[-1] == self.in_dim, (
            f"expected [B, T, {self.in_dim}], got {tuple(frames.shape)}"
        )
        batch, length, dim = frames.shape
        pad = (-length) % self.stack
        if pad:
            frames = F.pad(frames, (0, 0, 0, pad))
        stacked = frames.reshape(batch, (length + pad) // self.stack, dim * self.stack)
        value, gate = self.linear_1(self.norm(stacked)).chunk(2, dim=-1)
        return self.linear_2(value * F.silu(gate))

    def num_output_tokens(self, num_input_frames: int) -> int:
        return -(-num_input_frames // self.stack)


def build_projector(kind: str, in_dim: int, out_dim: int, **kwargs: int) -> nn.Module:
    """Build a projector by its string key; an unknown key raises `ValueError` listing the known ones."""
    if kind == "mlp2x_gelu":
        return MLP2xGELU(in_dim, out_dim)
    match = _STACK_RE.match(kind)
    if match:
        return StackSwiGLU(in_dim, out_dim, stack=int(match.group(1)), **kwargs)
    match = _CONNECTOR_RE.match(kind)
    if match:
        from fusion.connector import WhisperDecoderConnector

        return WhisperDecoderConnector(in_dim, out_dim, stack=int(match.group(1)), **kwargs)
    raise ValueError(f"unknown projector kind {kind!r}; known kinds: {', '.join(KNOWN_KINDS)}")
