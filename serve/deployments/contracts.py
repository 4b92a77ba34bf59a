"""What travels between the ingress and the model deployments (plain data, no torch).

The ingress imports this module only; the deployments' own modules load the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusion.prompt import Message
from fusion.registry import FusionMode
from modalities.llm.params import SamplingParams


@dataclass
class EncodedItem:
    """One media item as its encoder answers the chat path (`encode_item`)."""

    features: np.ndarray | None  # the modality's feature shape (`ModalitySpec.feature_shape`), float16
    text: str | None  # what the encoder read from it (Whisper's transcript, OCR text), for cascade modes
    # What the client may see with `chorus.return_media_text`: OCR lines with boxes and confidences,
    # a document's pages, a clip's language; plain JSON-able data.
    detail: dict[str, Any] | None = None


@dataclass
class AudioResult:
    features: np.ndarray | None  # [T, d_audio] float16, T = 50 frames/s of real audio
    transcript: str | None
    language: str | None
    duration_s: float
    segments: list[dict[str, Any]] | None = None  # whisper's record per segment (OpenAI's verbose fields)
    words: list[dict[str, Any]] | None = None  # {word, start, end}, only when word timestamps were asked for


@dataclass
class DecodeRequest:
    """A chat turn for the decoder: the conversation (media as `MediaItem`s, with their encoders'
    text where a cascade mode asked for it), the fusion mode per modality, each embedded item's
    encoder features, and how to sample. The decoder renders the prompt with its own tokenizer,
    checks it against its context window, and caps `params.max_tokens` to what is left of it.

    requested_max_tokens: what the client asked for (None: `params.max_tokens` is the deployment's
    default and is silently capped, as OpenAI does; set: a prompt that leaves less room is refused).
    """

    messages: list[Message]
    modes: dict[str, FusionMode]
    params: SamplingParams
    media: dict[int, np.ndarray] = field(default_factory=dict)  # media index → encoder features
    requested_max_tokens: int | None = None
    explain: bool = False  # `chorus.explain`: the last event carries the answer's explanation


@dataclass
class DecodeEvent:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # First event only: seconds from the decoder receiving the request to this token (prompt
    # embedding, queueing for a slot, prefill); the ingress reports it in `Server-Timing`.
    first_token_s: float | None = None
    # With `params.logprobs`: OpenAI's `logprobs.content` entries for this event's tokens.
    logprobs: list[dict[str, Any]] | None = None
    # Last event only, with `DecodeRequest.explain`: modality shares, ablation deltas, segments
    # (`modalities.llm.explain`), media referred to by index; the ingress adds boxes.
    explanation: dict[str, Any] | None = None
