"""Prompt building and splicing: chat messages with media → the LLM's input embeddings.

Two separate steps (Ultravox keeps them apart; so do we):

1. `build_prompt` renders the conversation with the LLM's own chat template, with each media item
   standing as a sentinel, and cuts the rendered text at the sentinels into token-id pieces and
   media slots (`PromptPlan`). In `transcript` mode the item is replaced by its transcript text
   instead, so no slot remains.
2. `splice` takes the embedded text pieces and the projected media tokens and concatenates them in
   plan order into `inputs_embeds`, asserting shapes on the way.

Nothing a client writes becomes structure. Every string that came from the request (message text of
any role, a transcript) enters the template as a sentinel too, indexing a table of literal texts, so
the rendered text holds only the template's markup, our media delimiters and sentinels. The template's
markup keeps its control tokens (`<|im_start|>`, ...); the literal texts are encoded with no added
token matched, so a `<|im_end|>` a client types is the characters `<|im_end|>`, and a client can type
no sentinel either (its text never enters the rendered string). Text between two control tokens is
encoded in one piece whoever wrote it, exactly as encoding the whole rendered string would: for text
without control tokens the ids are the same as the template's own tokenization (greedy answers and
the prefix cache don't move).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from fusion.registry import FUSION_MODES, FusionMode, spec  # noqa: F401 - FUSION_MODES re-exported

if TYPE_CHECKING:  # torch only where embeddings are spliced: planning stays light
    import torch
    from tokenizers import Tokenizer

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


@dataclass(frozen=True)
class Literal:
    """A text of the request in the prompt: a message's own text (`kind` "text" or "instructions",
    `message` its index) or what an encoder read from a media item (`kind` its modality, `media` its
    index). `text` is the string as it entered the prompt."""

    kind: str
    text: str
    message: int | None = None
    media: int | None = None


@dataclass
class PromptPlan:
    """The prompt as alternating token-id pieces and media slots, in order.

    `sources` follows the text tokens in plan order: `(literal, char)` for a token that starts in
    `literals[literal]` at character `char`, None for markup (the template's, our delimiters). It is
    what an explanation maps attention back to; the ids never depend on it.
    """

    pieces: list[list[int] | MediaSlot] = field(default_factory=list)
    literals: list[Literal] = field(default_factory=list)
    sources: list[tuple[int, int] | None] = field(default_factory=list)

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
    """A Hugging Face fast tokenizer with a chat template (what `AutoTokenizer` loads)."""

    backend_tokenizer: Tokenizer
    added_tokens_decoder: Mapping[int, object]

    def apply_chat_template(self, conversation, tokenize: bool = ..., add_generation_prompt: bool = ...): ...

    def __call__(self, text: str, add_special_tokens: bool = ..., return_offsets_mapping: bool = ...): ...


_ROLE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class _Sentinels:
    """Per-prompt sentinels: `t<i>` stands for the i-th literal text, `m<i>` for media item i. The nonce is
    fresh for every prompt and no client string enters the rendered text, so none can be forged."""

    def __init__(self) -> None:
        nonce = secrets.token_hex(8)
        self._format = f"\x00chorus-{nonce}-{{}}{{}}\x00"
        self.pattern = re.compile(f"\x00chorus-{nonce}-([tm])(\\d+)\x00")
        self.literals: list[str] = []
        self.origins: list[Literal] = []
        self.origin = Literal("text", "")  # what the next literals are (set per message and media item)

    def literal(self, text: str) -> str:
        if not text:
            return ""
        self.literals.append(text)
        self.origins.append(dataclasses.replace(self.origin, text=text))
        return self._format.format("t", len(self.literals) - 1)

    def media(self, index: int) -> str:
        return self._format.format("m", index)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_FENCE = re.compile(r'"{3,}')


def quoted_text(text: str) -> str:
    """Text read from a client's image or document, made fit to stand between our quote marks: no
    control characters, and no run of three quote marks that would end the quote early. (Template
    tokens and sentinels need nothing here: a literal is never markup, whatever it spells.)"""
    return _FENCE.sub('"', _CONTROL.sub("", text))


def _media_text(item: MediaItem, mode: FusionMode, sentinels: _Sentinels) -> str:
    """The item in the content: its delimited slot, its encoder's text (a literal), or both. The
    delimiters and the words around the text are ours: markup, like the template's. Text read from an
    image or a document stands quoted, as data (`ModalitySpec.text_frame`)."""
    media = spec(item.kind)
    message_origin = sentinels.origin
    sentinels.origin = Literal(item.kind, "", media=item.index)
    try:
        return _media_text_of(item, media, mode, sentinels)
    finally:
        sentinels.origin = message_origin


def _media_text_of(item: MediaItem, media, mode: FusionMode, sentinels: _Sentinels) -> str:
    opening, closing = media.delimiters
    slot = f"{opening}{sentinels.media(item.index)}{closing}"
    if not media.wants_text(mode):
        return slot
    if item.transcript is None:
        raise ValueError(f"{item.kind} item {item.index} needs its encoder's text in {mode!r} mode")
    if media.text_frame == ("", ""):  # a transcript: what the user said
        if not media.wants_features(mode):
            return sentinels.literal(item.transcript)
        return f"{slot} (transcript: {sentinels.literal(item.transcript)})"
    text = quoted_text(item.transcript).strip()
    if not text:
        article = "an" if media.kind[0] in "aeiou" else "a"
        read = f"\n\n[The customer attached {article} {media.kind}; no text could be read from it.]"
    else:
        read = f"{media.text_frame[0]}{sentinels.literal(text)}{media.text_frame[1]}"
    return f"{slot}\n{read}" if media.wants_features(mode) else read


_PLAIN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plain_encoder(tokenizer: ChatTokenizer) -> tuple[Tokenizer, frozenset[int]]:
    """A tokenizer with `tokenizer`'s model, normalizer and pre-tokenizer but no added vocabulary (it
    matches no added token, special or not), and the added tokens' ids; built once per tokenizer. A
    separate object: the shared tokenizer's state (`encode_special_tokens`, which
    `split_special_tokens=True` flips) is never touched, so concurrent prompts can't race on it."""
    cached = _PLAIN.get(tokenizer)
    if cached is None:
        from tokenizers import Tokenizer

        backend = tokenizer.backend_tokenizer
        plain = Tokenizer(backend.model)
        plain.normalizer = backend.normalizer
        plain.pre_tokenizer = backend.pre_tokenizer
        cached = _PLAIN[tokenizer] = (plain, frozenset(tokenizer.added_tokens_decoder))
    return cached


class _Encoder:
    """Encodes a rendered prompt run by run: the template's added tokens are real tokens, a literal's
    text is plain text, and plain text between two control tokens is encoded as one string, as the
    whole-string encode splits it. (A control token with `lstrip`/`rstrip` no longer eats a client's
    whitespace next to it: that whitespace is text now. SmolLM2's tokens strip nothing.)"""

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self._plain, self._added_ids = _plain_encoder(tokenizer)
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self.sources: list[tuple[int, int] | None] = []
        self._text: list[str] = []
        self._spans: list[tuple[int, int, int]] = []  # (start, end, literal) in the pending text
        self._pending = 0  # characters pending

    def markup(self, text: str) -> None:
        """Text the template (or this module) wrote: the added tokens in it are real tokens."""
        if not text:
            return
        encoding = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        cursor = 0
        for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
            if token in self._added_ids:
                self._append(text[cursor:start])
                self._flush_text()
                self.ids.append(token)
                self.sources.append(None)
                cursor = end
        self._append(text[cursor:])

    def literal(self, text: str, number: int) -> None:
        """Text from the request (literal `number`): plain characters, whatever they spell."""
        self._spans.append((self._pending, self._pending + len(text), number))
        self._append(text)

    def _append(self, text: str) -> None:
        self._text.append(text)
        self._pending += len(text)

    def take(self) -> tuple[list[int], list[tuple[int, int] | None]]:
        """The ids so far (pending text encoded) and their sources; the encoder starts a new piece."""
        self._flush_text()
        ids, self.ids = self.ids, []
        sources, self.sources = self.sources, []
        return ids, sources

    def _flush_text(self) -> None:
        text = "".join(self._text)
        spans = self._spans
        self._text.clear()
        self._spans, self._pending = [], 0
        if not text:
            return
        encoding = self._plain.encode(text, add_special_tokens=False)
        self.ids.extend(encoding.ids)
        for start, _end in encoding.offsets:
            # the literal this token starts in (a token may run on into the markup after it)
            self.sources.append(next(((n, start - a) for a, b, n in spans if a <= start < b), None))


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
    sentinels = _Sentinels()
    conversation = []
    for number, message in enumerate(messages):
        if not _ROLE.fullmatch(message.role):  # the template writes the role as markup
            raise ValueError(f"invalid role {message.role!r}")
        kind = "instructions" if message.role in ("system", "developer") else "text"
        sentinels.origin = Literal(kind, "", message=number)
        text = "".join(
            sentinels.literal(part)
            if isinstance(part, str)
            else _media_text(part, chosen.get(part.kind, spec(part.kind).default_mode), sentinels)
            for part in message.parts
        )
        conversation.append({"role": message.role, "content": text})
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    kinds = {part.index: part.kind for m in messages for part in m.parts if isinstance(part, MediaItem)}

    plan = PromptPlan(literals=sentinels.origins)
    encoder = _Encoder(tokenizer)
    cursor = 0

    def flush() -> None:
        ids, sources = encoder.take()
        if ids:
            plan.pieces.append(ids)
            plan.sources.extend(sources)

    for match in sentinels.pattern.finditer(rendered):
        encoder.markup(rendered[cursor : match.start()])
        cursor = match.end()
        which, number = match.group(1), int(match.group(2))
        if which == "t":
            encoder.literal(sentinels.literals[number], number)
            continue
        flush()
        plan.pieces.append(MediaSlot(kind=kinds[number], index=number))
    encoder.markup(rendered[cursor:])
    flush()
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
