"""Prompt building and splicing: chat messages with media → the LLM's input embeddings.

Two separate steps (Ultravox keeps them apart; so do we):

1. `build_prompt` renders the conversation with the LLM's own chat template, with each media item
   standing as a sentinel, and cuts the rendered text at the sentinels into token-id pieces and
   media slots (`PromptPlan`). In `transcript` mode the item is replaced by its transcript text
   instead, so no slot remains.
2. `splice` takes the embedded text pieces and the projected media tokens and concatenates them in
   plan order into `inputs_embeds`, asserting shapes on the way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

import torch

MediaKind = Literal["audio", "image"]
FusionMode = Literal["embed", "transcript", "both"]
FUSION_MODES: tuple[FusionMode, ...] = ("embed", "transcript", "both")

# Short text delimiters around projected media tokens, so the LLM sees where media starts and ends.
DELIMITERS: dict[MediaKind, tuple[str, str]] = {"audio": ("<audio>", "</audio>"), "image": ("<image>", "</image>")}
_SENTINEL = "\x00chorus-media-{}\x00"
_SENTINEL_RE = re.compile("\x00chorus-media-(\\d+)\x00")


@dataclass(frozen=True)
class MediaItem:
    """One image or audio clip of a request, by its position in the request's media list."""

    kind: MediaKind
    index: int
    transcript: str | None = None  # Whisper's transcript, needed in `transcript` and `both` modes


@dataclass(frozen=True)
class Message:
    role: str
    parts: Sequence[str | MediaItem]


@dataclass(frozen=True)
class MediaSlot:
    """Where a media item's projected tokens go in the prompt."""

    kind: MediaKind
    index: int


@dataclass
class PromptPlan:
    """The prompt as alternating token-id pieces and media slots, in order."""

    pieces: list[list[int] | MediaSlot] = field(default_factory=list)

    @property
    def slots(self) -> list[MediaSlot]:
        return [p for p in self.pieces if isinstance(p, MediaSlot)]

    @property
    def num_text_tokens(self) -> int:
        return sum(len(p) for p in self.pieces if isinstance(p, list))

    def token_ids(self) -> list[int]:
        """All text token ids; valid only for a plan without media slots."""
        if self.slots:
            raise ValueError("plan has media slots; splice embeddings instead")
        return [tok for piece in self.pieces for tok in piece]  # type: ignore[union-attr]


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation, tokenize: bool = ..., add_generation_prompt: bool = ...): ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def _media_text(item: MediaItem, mode: FusionMode) -> str:
    opening, closing = DELIMITERS[item.kind]
    if item.kind == "image" or mode == "embed":
        return f"{opening}{_SENTINEL.format(item.index)}{closing}"
    if item.transcript is None:
        raise ValueError(f"{item.kind} item {item.index} needs a transcript in {mode!r} mode")
    if mode == "transcript":
        return item.transcript
    return f"{opening}{_SENTINEL.format(item.index)}{closing} (transcript: {item.transcript})"


def build_prompt(messages: Sequence[Message], tokenizer: ChatTokenizer, audio_mode: FusionMode) -> PromptPlan:
    """Render `messages` with the tokenizer's chat template (generation prompt added) into a plan.

    Images always become embedding slots; audio follows `audio_mode`.
    """
    if audio_mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {audio_mode!r}; known: {', '.join(FUSION_MODES)}")
    conversation = []
    for message in messages:
        text = "".join(part if isinstance(part, str) else _media_text(part, audio_mode) for part in message.parts)
        conversation.append({"role": message.role, "content": text})
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    kinds = {part.index: part.kind for m in messages for part in m.parts if isinstance(part, MediaItem)}

    plan = PromptPlan()
    cursor = 0
    for match in _SENTINEL_RE.finditer(rendered):
        if match.start() > cursor:
            plan.pieces.append(tokenizer.encode(rendered[cursor : match.start()], add_special_tokens=False))
        index = int(match.group(1))
        plan.pieces.append(MediaSlot(kind=kinds[index], index=index))
        cursor = match.end()
    if cursor < len(rendered):
        plan.pieces.append(tokenizer.encode(rendered[cursor:], add_special_tokens=False))
    return plan


def splice(
    plan: PromptPlan,
    text_embeds: Sequence[torch.Tensor],
    media_embeds: dict[int, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, dict[int, int]]:
    """Concatenate text and media embeddings in plan order.

    text_embeds: one `[L_i, H]` tensor per token-id piece of the plan, in order.
    media_embeds: media index → `[M_j, H]` projected tokens.
    Returns `inputs_embeds [1, L, H]`, `attention_mask [1, L]` (all ones) and the number of soft
    tokens per media index.
    """
    text_pieces = [p for p in plan.pieces if isinstance(p, list)]
    assert len(text_pieces) == len(text_embeds), f"{len(text_pieces)} text pieces, {len(text_embeds)} embeddings"
    slot_indices = {slot.index for slot in plan.slots}
    assert slot_indices == set(media_embeds), f"slots {sorted(slot_indices)} != media {sorted(media_embeds)}"
    if not text_embeds and not media_embeds:
        raise ValueError("empty prompt")
    reference = text_embeds[0] if text_embeds else next(iter(media_embeds.values()))
    hidden, dtype = reference.shape[-1], reference.dtype

    parts: list[torch.Tensor] = []
    counts: dict[int, int] = {}
    text_iter = iter(zip(text_pieces, text_embeds))
    for piece in plan.pieces:
        if isinstance(piece, MediaSlot):
            tensor = media_embeds[piece.index]
            counts[piece.index] = tensor.shape[0]
        else:
            ids, tensor = next(text_iter)
            assert tensor.shape[0] == len(ids), f"piece of {len(ids)} ids embedded as {tensor.shape[0]} rows"
        assert tensor.dim() == 2 and tensor.shape[1] == hidden, f"expected [*, {hidden}], got {tuple(tensor.shape)}"
        assert tensor.dtype == dtype, f"dtype {tensor.dtype} != {dtype}"
        parts.append(tensor)
    inputs_embeds = torch.cat(parts, dim=0).unsqueeze(0)
    attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
    return inputs_embeds, attention_mask, counts
