"""From an OpenAI request to the decoder's input: media extraction, concurrent encoder fan-out,
prompt planning. No HTTP here; the ingress calls it and maps its `APIError`s to responses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Awaitable

import numpy as np

from fusion.prompt import FusionMode, MediaItem, Message, PromptPlan, build_prompt

from modalities.errors import MediaError

from .errors import APIError
from .fetch import RemoteMediaFetcher, is_remote_url
from .protocol import AudioPart, ChatCompletionRequest, ImagePart, TextPart

_DATA_URL_RE = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
AUDIO_FRAMES_PER_TOKEN = 4  # matches the audio projector's stack size


@dataclass
class MediaInput:
    kind: str  # "audio" | "image"
    index: int
    data: bytes
    param: str  # the request field it came from, for error messages


@dataclass
class EncodedMedia:
    features: dict[int, np.ndarray]
    transcripts: dict[int, str]


def _b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise APIError(400, "invalid base64 data", param=param, code="invalid_base64") from err


async def decode_image_url(url: str, param: str, fetcher: RemoteMediaFetcher | None) -> bytes:
    """The image bytes of a data URL, or of a remote URL when the deployment fetches them."""
    match = _DATA_URL_RE.match(url)
    if match:
        if not match.group("b64"):
            raise APIError(400, "image data URLs must be base64-encoded", param=param, code="invalid_image_url")
        mime = (match.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise APIError(400, f"expected an image data URL, got '{mime[:40]}'", param=param, code="invalid_image_url")
        return _b64(url[match.end() :], param)
    if is_remote_url(url):
        if fetcher is None or not fetcher.enabled:
            raise APIError(
                400,
                "remote image URLs are disabled on this deployment; send the image as a base64 data URL",
                param=param,
                code="remote_url_disabled",
            )
        return await fetcher.fetch_image(url, param)
    raise APIError(400, "image_url must be a data: URL", param=param, code="invalid_image_url")


async def _all_or_cancel(coroutines: list[Awaitable[bytes]]) -> list[bytes]:
    """Run the fetches concurrently; the first refusal cancels the others."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def extract(
    request: ChatCompletionRequest, fetcher: RemoteMediaFetcher | None, max_media: int
) -> tuple[list[Message], list[MediaInput]]:
    """Split the request into fusion messages (media as `MediaItem`s) and the media bytes.

    Remote images (only with an enabled `fetcher`) are fetched concurrently once the whole request
    has been checked, so a request refused for its shape costs no outbound traffic.
    """
    messages: list[Message] = []
    media: list[MediaInput] = []
    pending: dict[int, tuple[str, str]] = {}  # media index -> (url, param)
    for m_i, message in enumerate(request.messages):
        parts: list[str | MediaItem] = []
        for p_i, part in enumerate(message.parts()):
            param = f"messages.{m_i}.content.{p_i}"
            if isinstance(part, TextPart):
                parts.append(part.text)
                continue
            if len(media) >= max_media:
                raise APIError(400, f"at most {max_media} media items per request", param=param, code="too_many_media")
            if isinstance(part, ImagePart):
                url_param = f"{param}.image_url.url"
                if is_remote_url(part.image_url.url) and fetcher is not None and fetcher.enabled:
                    fetcher.check_url(part.image_url.url, url_param)  # refuse by policy before any I/O
                    pending[len(media)] = (part.image_url.url, url_param)
                    data = b""
                else:
                    data = await decode_image_url(part.image_url.url, url_param, fetcher)
                kind = "image"
            else:
                assert isinstance(part, AudioPart)
                data = _b64(part.input_audio.data, f"{param}.input_audio.data")
                kind = "audio"
            if not data and len(media) not in pending:
                raise APIError(400, f"empty {kind} data", param=param, code="invalid_media")
            media.append(MediaInput(kind, len(media), data, param))
            parts.append(MediaItem(kind, media[-1].index))  # type: ignore[arg-type]
        role = "system" if message.role == "developer" else message.role
        messages.append(Message(role, parts))
    if pending:
        assert fetcher is not None
        fetched = await _all_or_cancel([fetcher.fetch_image(url, p) for url, p in pending.values()])
        for index, data in zip(pending, fetched):
            if not data:
                raise APIError(400, "empty image data", param=media[index].param, code="invalid_media")
            media[index].data = data
    return messages, media


async def encode_all(media: list[MediaInput], audio_mode: FusionMode, audio_handle, vision_handle) -> EncodedMedia:
    """Send every media item to its encoder at once and wait for all of them."""
    want_features = audio_mode in ("embed", "both")
    want_transcript = audio_mode in ("transcript", "both")

    async def one(item: MediaInput) -> tuple[int, Any]:
        try:
            if item.kind == "audio":
                return item.index, await audio_handle.encode.remote(item.data, want_features, want_transcript)
            return item.index, await vision_handle.encode.remote(item.data)
        except MediaError as err:
            # Name the request field the bad item came from, not the runtime's internal name.
            raise APIError(400, f"{item.kind}: {err.message}", param=item.param, code=err.code) from err

    results = await asyncio.gather(*(one(item) for item in media))
    encoded = EncodedMedia(features={}, transcripts={})
    for index, result in results:
        if isinstance(result, np.ndarray):
            encoded.features[index] = result
            continue
        if result.features is not None:
            encoded.features[index] = result.features
        if result.transcript is not None:
            encoded.transcripts[index] = result.transcript
    return encoded


def plan_prompt(messages: list[Message], encoded: EncodedMedia, tokenizer, audio_mode: FusionMode) -> PromptPlan:
    """Attach transcripts to the audio items and render the prompt plan."""
    with_transcripts = [
        Message(
            m.role,
            [
                MediaItem(p.kind, p.index, encoded.transcripts.get(p.index)) if isinstance(p, MediaItem) else p
                for p in m.parts
            ],
        )
        for m in messages
    ]
    return build_prompt(with_transcripts, tokenizer, audio_mode=audio_mode)


def prompt_length(plan: PromptPlan, encoded: EncodedMedia) -> int:
    """Tokens the decoder will see: text tokens plus each media item's soft tokens."""
    total = plan.num_text_tokens
    for slot in plan.slots:
        frames = encoded.features[slot.index].shape[0]
        total += -(-frames // AUDIO_FRAMES_PER_TOKEN) if slot.kind == "audio" else frames
    return total
