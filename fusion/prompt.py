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
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from fusion.registry import FUSION_MODES, FusionMode, spec  # noqa: F401 - FUSION_MODES re-exported

if TYPE_CHECKING:  # torch only where embeddings are spliced: planning stays light
    import torch

MediaKind = str  # a key of `fusion.registry.MODALITIES`


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


def _media_text(item: MediaItem, mode: FusionMode, sentinel: str) -> str:
    media = spec(item.kind)
    opening, closing = media.delimiters
    slot = f"{opening}{sentinel.format(item.index)}{closing}"
    if not media.wants_text(mode):
        return slot
    if item.transcript is None:
        raise ValueError(f"{item.kind} item {item.index} needs a transcript in {mode!r} mode")
    if not media.wants_features(mode):
        return item.transcript
    return f"{slot} (transcript: {item.transcript})"


def resolve_modes(
    audio_mode: FusionMode | None = None, modes: Mapping[str, FusionMode] | None = None
) -> dict[str, FusionMode]:
    """The fusion mode per modality: `modes`, with `audio_mode` as a shorthand for its audio entry,
    and each kind's registry default where neither says; a mode the kind does not support raises."""
    chosen = dict(modes or {})
    if audio_mode is not None:
        chosen["audio"] = audio_mode
    resolved: dict[str, FusionMode] = {}
    for kind, mode in chosen.items():
        if mode not in spec(kind).modes:
            raise ValueError(f"unknown fusion mode {mode!r} for {kind}; known: {', '.join(spec(kind).modes)}")
        resolved[kind] = mode
    return resolved


def build_prompt(
    messages: Sequence[Message],
    tokenizer: ChatTokenizer,
    audio_mode: FusionMode | None = None,
    *,
    modes: Mapping[str, FusionMode] | None = None,
) -> PromptPlan:
    """Render `messages` with the tokenizer's chat template (generation prompt added) into a plan.

    Each media item follows its kind's mode (`modes`, `audio_mode` for audio, else the registry's
    default): embedding slots, its encoder's text, or both.
    """
    chosen = resolve_modes(audio_mode, modes)
    # A fresh random sentinel per prompt: text the client wrote cannot contain it, so no typed
    # marker can move or repeat a media slot.
    nonce = secrets.token_hex(8)
    sentinel = f"\x00chorus-media-{nonce}-{{}}\x00"
    sentinel_re = re.compile(f"\x00chorus-media-{nonce}-(\\d+)\x00")
    conversation = []
    for message in messages:
        text = "".join(
            part
            if isinstance(part, str)
            else _media_text(part, chosen.get(part.kind, spec(part.kind).default_mode), sentinel)
            for part in message.parts
        )
        conversation.append({"role": message.role, "content": text})
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    kinds = {part.index: part.kind for m in messages for part in m.parts if isinstance(part, MediaItem)}

    plan = PromptPlan()
    cursor = 0
    for match in sentinel_re.finditer(rendered):
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
    import torch

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
