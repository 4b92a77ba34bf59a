"""The media pipeline of a chat request: content parts → media bytes → encoder results.

`extract` splits a request into fusion messages (media as `MediaItem`s) and the media bytes; part
types are read per the modality registry. `encode_all` sends every item to its modality's encoder
at once, asking each for features and/or text per its fusion mode. Refusals are `InvalidRequest`s
naming the request field; no HTTP here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusion.prompt import MediaItem, Message
from fusion.registry import BY_PART_TYPE, FusionMode, ModalitySpec
from modalities.errors import MediaError
from serve.errors import InvalidRequest
from serve.protocol import AudioPart, ChatCompletionRequest, FilePart, ImagePart, MediaPart, TextPart

from .fetch import RemoteMediaFetcher, is_remote_url

_DATA_URL_RE = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


@dataclass
class MediaInput:
    spec: ModalitySpec
    index: int
    data: bytes
    param: str  # the request field it came from, for error messages


@dataclass
class EncodedMedia:
    features: dict[int, np.ndarray] = field(default_factory=dict)  # media index → encoder features
    texts: dict[int, str] = field(default_factory=dict)  # media index → the encoder's text (transcript, OCR)
    details: dict[int, dict[str, Any]] = field(default_factory=dict)  # media index → what the encoder read, in full


def _b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidRequest("invalid base64 data", param=param, code="invalid_base64") from err


async def decode_image_url(url: str, param: str, fetcher: RemoteMediaFetcher | None) -> bytes:
    """The image bytes of a data URL, or of a remote URL when the deployment fetches them."""
    match = _DATA_URL_RE.match(url)
    if match:
        if not match.group("b64"):
            raise InvalidRequest("image data URLs must be base64-encoded", param=param, code="invalid_image_url")
        mime = (match.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise InvalidRequest(f"expected an image data URL, got '{mime[:40]}'", param=param, code="invalid_image_url")
        return _b64(url[match.end() :], param)
    if is_remote_url(url):
        if fetcher is None or not fetcher.enabled:
            raise InvalidRequest(
                "remote image URLs are disabled on this deployment; send the image as a base64 data URL",
                param=param,
                code="remote_url_disabled",
            )
        return await fetcher.fetch_image(url, param)
    raise InvalidRequest("image_url must be a data: URL", param=param, code="invalid_image_url")


DOCUMENT_TYPES = {"application/pdf": "PDF"}  # the document formats a `file` part may carry


def decode_file_data(part: FilePart, param: str) -> bytes:
    """The bytes of a `file` part's `file_data` data URL; only PDF documents are read."""
    accepted = ", ".join(f"{mime} ({name})" for mime, name in DOCUMENT_TYPES.items())
    if part.file.file_id is not None and part.file.file_data is None:
        raise InvalidRequest(
            "file_id is not supported (this service has no Files API); send the document as file_data, a base64 data URL",
            param=f"{param}.file.file_id",
            code="file_id_unsupported",
        )
    data_param = f"{param}.file.file_data"
    url = part.file.file_data
    if not url:
        raise InvalidRequest("file_data is required: the document as a base64 data URL", param=data_param, code="invalid_file")
    match = _DATA_URL_RE.match(url)
    if not match or not match.group("b64"):
        raise InvalidRequest(
            f"file_data must be a base64 data URL (data:application/pdf;base64,...); accepted: {accepted}",
            param=data_param,
            code="invalid_file",
        )
    mime = (match.group("mime") or "").lower()
    if mime not in DOCUMENT_TYPES and not (mime in ("", "application/octet-stream") and (part.file.filename or "").lower().endswith(".pdf")):
        raise InvalidRequest(
            f"unsupported document type '{mime[:60] or 'none'}'; accepted: {accepted}",
            param=data_param,
            code="unsupported_document_format",
        )
    return _b64(url[match.end() :], data_param)


async def _all_or_cancel(coroutines: list[Awaitable[bytes]]) -> list[bytes]:
    """Run the fetches concurrently; the first refusal cancels the others."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


class _Extraction:
    """One request's media, collected part by part; remote URLs are fetched at the end, together."""

    READERS = {"image_url": "_image_bytes", "input_audio": "_audio_bytes", "file": "_file_bytes"}  # part type → reader

    def __init__(self, fetcher: RemoteMediaFetcher | None, max_media: int) -> None:
        self.fetcher = fetcher
        self.max_media = max_media
        self.media: list[MediaInput] = []
        self.pending: dict[int, tuple[str, str]] = {}  # media index -> (url, param)

    async def _image_bytes(self, part: ImagePart, param: str) -> bytes:
        url, url_param = part.image_url.url, f"{param}.image_url.url"
        if is_remote_url(url) and self.fetcher is not None and self.fetcher.enabled:
            self.fetcher.check_url(url, url_param)  # refuse by policy before any I/O
            self.pending[len(self.media)] = (url, url_param)
            return b""
        return await decode_image_url(url, url_param, self.fetcher)

    async def _audio_bytes(self, part: AudioPart, param: str) -> bytes:
        return _b64(part.input_audio.data, f"{param}.input_audio.data")

    async def _file_bytes(self, part: FilePart, param: str) -> bytes:
        return decode_file_data(part, param)

    async def add(self, part: MediaPart, param: str) -> MediaItem:
        if len(self.media) >= self.max_media:
            raise InvalidRequest(f"at most {self.max_media} media items per request", param=param, code="too_many_media")
        media = BY_PART_TYPE[part.type]
        data = await getattr(self, self.READERS[part.type])(part, param)
        index = len(self.media)
        if not data and index not in self.pending:
            raise InvalidRequest(f"empty {media.kind} data", param=param, code="invalid_media")
        self.media.append(MediaInput(media, index, data, param))
        return MediaItem(media.kind, index)

    async def fetch_pending(self) -> None:
        if not self.pending:
            return
        assert self.fetcher is not None
        fetched = await _all_or_cancel([self.fetcher.fetch_image(url, p) for url, p in self.pending.values()])
        for index, data in zip(self.pending, fetched):
            if not data:
                raise InvalidRequest("empty image data", param=self.media[index].param, code="invalid_media")
            self.media[index].data = data


async def extract(
    request: ChatCompletionRequest, fetcher: RemoteMediaFetcher | None, max_media: int
) -> tuple[list[Message], list[MediaInput]]:
    """Split the request into fusion messages (media as `MediaItem`s) and the media bytes.

    Remote images (only with an enabled `fetcher`) are fetched concurrently once the whole request
    has been checked, so a request refused for its shape costs no outbound traffic.
    """
    extraction = _Extraction(fetcher, max_media)
    messages: list[Message] = []
    for m_i, message in enumerate(request.messages):
        parts: list[str | MediaItem] = []
        for p_i, part in enumerate(message.parts()):
            if isinstance(part, TextPart):
                parts.append(part.text)
            else:
                parts.append(await extraction.add(part, f"messages.{m_i}.content.{p_i}"))
        role = "system" if message.role == "developer" else message.role
        messages.append(Message(role, parts))
    await extraction.fetch_pending()
    return messages, extraction.media


async def encode_all(
    media: list[MediaInput], modes: Mapping[str, FusionMode], encoders: Mapping[str, Any]
) -> EncodedMedia:
    """Send every media item to its modality's encoder at once and wait for all of them."""

    async def one(item: MediaInput) -> tuple[int, Any]:
        mode = modes[item.spec.kind]
        try:
            encoder = encoders[item.spec.kind]
            result = await encoder.encode_item.remote(
                item.data, item.spec.wants_features(mode), item.spec.wants_text(mode), kind=item.spec.kind
            )
        except MediaError as err:
            # Name the request field the bad item came from, not the runtime's internal name.
            raise InvalidRequest(f"{item.spec.kind}: {err.message}", param=item.param, code=err.code) from err
        return item.index, result

    encoded = EncodedMedia()
    for index, result in await asyncio.gather(*(one(item) for item in media)):
        if result.features is not None:
            encoded.features[index] = result.features
        if result.text is not None:
            encoded.texts[index] = result.text
        if result.detail is not None:
            encoded.details[index] = result.detail
    return encoded


def with_texts(messages: list[Message], encoded: EncodedMedia) -> list[Message]:
    """`messages` with each media item carrying its encoder's text (the transcript), where there is one."""
    return [
        Message(
            m.role,
            [MediaItem(p.kind, p.index, encoded.texts.get(p.index)) if isinstance(p, MediaItem) else p for p in m.parts],
        )
        for m in messages
    ]


__all__ = ["EncodedMedia", "MediaInput", "decode_image_url", "encode_all", "extract", "with_texts"]
