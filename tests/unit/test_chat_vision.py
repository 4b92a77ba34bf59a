"""The chat service's vision path without Ray: a fake vision handle (canned OCR text and detail)
beside the fake audio one, around a real `LLMDecoder` (tiny random Llama, byte-level tokenizer).
What text reaches the decoder, how `chorus.fusion` picks each kind's mode, `chorus.media` with
`return_media_text`, and the refusals of `file` parts."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaConfig, LlamaForCausalLM

from fusion.prompt import MediaItem, Message, build_prompt
from modalities.errors import MediaError
from modalities.llm.runtime import LLMRuntime
from serve.config import ChorusConfig
from serve.deployments.contracts import EncodedItem
from serve.deployments.llm import LLMDecoder
from serve.errors import InvalidRequest
from serve.protocol import ChatCompletionRequest
from serve.services.chat import DONE, ChatService
from tests.helpers.tokenizer import tiny_chat_tokenizer
from tests.unit.test_chat_service import TRANSCRIPT, FakeAudioHandle, FakeDecoderHandle, _Remote, audio_part, chat
from tests.unit.test_llm import HIDDEN, MODEL_SEED, VOCAB_SIZE

LABEL = "Order AB123456\nTotal $48.90"
BOX = [[30.0, 20.0], [360.0, 20.0], [360.0, 60.0], [30.0, 60.0]]
OCR_DETAIL = {
    "text": LABEL,
    "lines": [{"text": "Order AB123456", "box": BOX, "confidence": 0.97}, {"text": "Total $48.90", "box": BOX, "confidence": 0.99}],
    "width": 800,
    "height": 260,
    "truncated": False,
    "cached": False,
    "ocr_ms": 12.5,
}
DOCUMENT_TEXT = "--- page 1 ---\nInvoice 2024-0117\n\n--- page 2 ---\nTOTAL DUE 1,234.56"
DOCUMENT_DETAIL = {
    "text": DOCUMENT_TEXT,
    "page_count": 2,
    "truncated": False,
    "pages": [
        {"number": 1, "source": "text", "text": "Invoice 2024-0117", "lines": []},
        {"number": 2, "source": "ocr", "text": "TOTAL DUE 1,234.56", "lines": [{"text": "TOTAL DUE 1,234.56", "box": BOX, "confidence": 0.9}]},
    ],
    "read_ms": 40.0,
    "cached": False,
}
PDF = b"%PDF-1.7\n% a stand-in: the fake vision handle reads no PDF\n"
ENCRYPTED = b"%PDF-1.7\n% the fake refuses this one as the real reader refuses an encrypted PDF\n"
IMAGE_FEATURES = (6, 12)  # [N, d_vision] patches the fake "CLIP" returns


class FakeVisionHandle:
    """The vision deployment's chat-path call: OCR text and detail, CLIP-like features, documents."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, bool, str]] = []
        self.encode_item = _Remote(self._encode_item)

    async def _encode_item(self, data: bytes, want_features: bool = True, want_text: bool = False, kind: str = "image") -> EncodedItem:
        self.calls.append((want_features, want_text, kind))
        if kind == "document":
            if data == ENCRYPTED:
                raise MediaError("the PDF is password-protected; send it without a password", code="document_encrypted")
            return EncodedItem(None, DOCUMENT_TEXT, dict(DOCUMENT_DETAIL))
        features = np.ones(IMAGE_FEATURES, dtype=np.float16) if want_features else None
        if want_text:
            return EncodedItem(features, LABEL, dict(OCR_DETAIL))
        return EncodedItem(features, None)


class NoImageProjectorDecoder(FakeDecoderHandle):
    """The decoder as a deployment with a trained audio projector only (no untrained ones allowed)."""

    async def _info(self) -> dict[str, Any]:
        return {**self.decoder.info(), "projectors": ["audio"], "random_projectors": False}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_chat_tokenizer()


def build_model(tokenizer) -> LlamaForCausalLM:
    """`tests.unit.test_llm.build_model`'s tiny Llama with room for framed OCR text: the byte-level
    tokenizer spends a token per byte, and the quote frame alone is ~200 bytes."""
    torch.manual_seed(MODEL_SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def decoder(tokenizer) -> LLMDecoder:
    config = {"fusion": {"allow_random_projectors": True}, "llm": {"threads": 1}}
    return LLMDecoder(config, runtime_factory=lambda _config: LLMRuntime(build_model(tokenizer), tokenizer))


def service(decoder: LLMDecoder, handle_class=FakeDecoderHandle, **overrides: Any):
    config = ChorusConfig.model_validate({"fusion": {"allow_random_projectors": True}, **overrides})
    handle, audio, vision = handle_class(decoder), FakeAudioHandle(), FakeVisionHandle()
    encoders = {"audio": audio, "image": vision, "document": vision}
    return ChatService(config, encoders, handle), handle, audio, vision


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_part(data: bytes = b"\x89PNG fake image bytes") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data, "image/png")}}


def file_part(data: bytes = PDF, mime: str = "application/pdf", **file: Any) -> dict[str, Any]:
    return {"type": "file", "file": {"filename": "invoice.pdf", "file_data": data_url(data, mime), **file}}


def complete(svc: ChatService, req: ChatCompletionRequest) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        return await svc.complete(await svc.start(req), started=0.0)

    return asyncio.run(run())


def stream(svc: ChatService, req: ChatCompletionRequest) -> list[dict[str, Any]]:
    async def run() -> list[Any]:
        generation = await svc.start(req)
        _first, events = await svc.first_event(generation)
        return [group async for group in svc.chunks(generation, events, include_usage=False, started=0.0)]

    return [chunk for group in asyncio.run(run()) for chunk in group if chunk != DONE]


def refusal(svc: ChatService, req: ChatCompletionRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        complete(svc, req)
    return caught.value


def media_items(request) -> list[MediaItem]:
    return [part for message in request.messages for part in message.parts if isinstance(part, MediaItem)]


# ---------------------------------------------------------------------------------------------
# OCR text into the prompt


def test_images_are_read_by_ocr_by_default_and_the_text_reaches_the_decoder(decoder, tokenizer):
    svc, handle, _audio, vision = service(decoder)
    body = complete(svc, chat([{"type": "text", "text": "What is the order number? "}, image_part()], max_tokens=2))
    assert vision.calls == [(False, True, "image")]  # text only: no CLIP pass
    (request,) = handle.requests
    assert request.modes["image"] == "ocr" and request.media == {}
    assert media_items(request) == [MediaItem("image", 0, LABEL)]
    expected = build_prompt(
        [Message("user", ["What is the order number? ", MediaItem("image", 0, LABEL)])], tokenizer, modes={"image": "ocr"}
    )
    assert body["usage"]["prompt_tokens"] == expected.num_text_tokens
    assert "chorus" not in body  # nothing asked for: no extension in the answer


def test_a_document_is_read_as_text_and_reaches_the_decoder(decoder):
    svc, handle, _audio, vision = service(decoder)
    complete(svc, chat([{"type": "text", "text": "Total?"}, file_part()], max_tokens=2))
    assert vision.calls == [(False, True, "document")]
    (request,) = handle.requests
    assert media_items(request) == [MediaItem("document", 0, DOCUMENT_TEXT)] and request.media == {}


def test_an_octet_stream_named_pdf_is_taken_as_a_document(decoder):
    svc, _handle, _audio, vision = service(decoder)
    complete(svc, chat([file_part(mime="application/octet-stream")], max_tokens=1))
    assert vision.calls == [(False, True, "document")]


# ---------------------------------------------------------------------------------------------
# chorus.fusion


@pytest.mark.parametrize(
    "fusion,image_call,audio_call",
    [
        ("ocr", (False, True, "image"), (False, True)),  # images only take it; audio keeps its transcript
        ("transcript", (False, True, "image"), (False, True)),  # audio only takes it; images keep ocr
        ("both", (False, True, "image"), (True, True)),  # a mode alone is audio's (as before images had modes)
        ("embed", (False, True, "image"), (True, False)),
        ({"image": "both"}, (True, True, "image"), (False, True)),
        ({"image": "embed", "audio": "both"}, (True, False, "image"), (True, True)),
        ({"audio": "embed"}, (False, True, "image"), (True, False)),
    ],
    ids=["ocr", "transcript", "both", "embed", "obj-image-both", "obj-both-kinds", "obj-audio-only"],
)
def test_chorus_fusion_sets_each_kinds_mode(decoder, fusion, image_call, audio_call):
    svc, handle, audio, vision = service(decoder)
    complete(svc, chat([image_part(), audio_part()], max_tokens=1, chorus={"fusion": fusion}))
    assert vision.calls == [image_call] and audio.calls == [audio_call]
    (request,) = handle.requests
    assert (0 in request.media) == image_call[0] and (1 in request.media) == audio_call[0]
    item = media_items(request)[0]
    assert item.transcript == (LABEL if image_call[1] else None)


def test_a_mode_an_image_does_not_take_is_refused_naming_the_kind(decoder):
    svc, handle, _audio, vision = service(decoder)
    error = refusal(svc, chat([image_part()], chorus={"fusion": {"image": "transcript"}}))
    assert error.param == "chorus.fusion.image" and error.code == "invalid_value"
    assert "ocr" in error.message and "embed" in error.message
    error = refusal(svc, chat([image_part()], chorus={"fusion": {"audio": "ocr"}}))
    assert error.param == "chorus.fusion.audio"
    assert vision.calls == [] and handle.requests == []


def test_an_unknown_kind_or_mode_is_refused_by_the_schema():
    for fusion in ({"video": "ocr"}, {"image": "pixels"}, "pixels", {"document": "ocr"}):
        with pytest.raises(ValidationError):
            chat("hi", chorus={"fusion": fusion})


@pytest.mark.parametrize("fusion", [{"image": "both"}, {"image": "embed"}])
def test_embedding_an_image_without_its_projector_is_fusion_unavailable(decoder, fusion):
    svc, handle, _audio, vision = service(decoder, NoImageProjectorDecoder)
    error = refusal(svc, chat([image_part()], chorus={"fusion": fusion}))
    assert error.code == "fusion_unavailable" and error.param == "chorus.fusion"
    assert "ocr" in error.message  # the mode that works is suggested
    assert vision.calls == [] and handle.requests == []


def test_without_a_projector_the_default_ocr_mode_still_works(decoder):
    svc, handle, _audio, vision = service(decoder, NoImageProjectorDecoder)
    complete(svc, chat([image_part()], max_tokens=1))
    assert vision.calls == [(False, True, "image")] and len(handle.requests) == 1


def test_the_configured_image_mode_is_the_default(decoder):
    clip = {"model_name": "tests/assets/tiny_clip.json", "pretrained": None, "random_init": True}
    svc, handle, _audio, vision = service(decoder, vision=clip, fusion={"image_mode": "both", "allow_random_projectors": True})
    complete(svc, chat([image_part()], max_tokens=1))
    assert vision.calls == [(True, True, "image")] and set(handle.requests[0].media) == {0}


# ---------------------------------------------------------------------------------------------
# return_media_text


def test_return_media_text_puts_what_was_read_in_the_completion(decoder):
    svc, _handle, _audio, _vision = service(decoder)
    parts = [image_part(), audio_part(), file_part()]
    body = complete(svc, chat(parts, max_tokens=1, chorus={"return_media_text": True}))
    image, clip, document = body["chorus"]["media"]
    assert image == {"index": 0, "kind": "image", "param": "messages.0.content.0", "mode": "ocr", **OCR_DETAIL}
    assert image["lines"][0]["text"] == "Order AB123456" and len(image["lines"][0]["box"]) == 4
    assert clip == {"index": 1, "kind": "audio", "param": "messages.0.content.1", "mode": "transcript", "text": TRANSCRIPT}
    assert document["kind"] == "document" and document["mode"] == "ocr" and document["text"] == DOCUMENT_TEXT
    assert [page["source"] for page in document["pages"]] == ["text", "ocr"]
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "chorus"}


def test_an_embedded_image_is_listed_with_its_mode_and_no_text(decoder):
    svc, _handle, _audio, _vision = service(decoder)
    body = complete(svc, chat([image_part()], max_tokens=1, chorus={"fusion": {"image": "embed"}, "return_media_text": True}))
    assert body["chorus"]["media"] == [{"index": 0, "kind": "image", "param": "messages.0.content.0", "mode": "embed"}]


@pytest.mark.parametrize("chorus", [None, {"return_media_text": False}, {"fusion": "ocr"}])
def test_no_media_text_unless_asked(decoder, chorus):
    svc, _handle, _audio, _vision = service(decoder)
    extra = {"chorus": chorus} if chorus is not None else {}
    assert "chorus" not in complete(svc, chat([image_part()], max_tokens=1, **extra))
    chunks = stream(svc, chat([image_part()], max_tokens=2, stream=True, **extra))
    assert chunks and all("chorus" not in chunk for chunk in chunks)


def test_a_stream_carries_the_media_text_on_its_first_chunk_only(decoder):
    svc, _handle, _audio, _vision = service(decoder)
    chunks = stream(svc, chat([image_part(), file_part()], max_tokens=4, stream=True, chorus={"return_media_text": True}))
    assert len(chunks) >= 3  # the role chunk, some text, the finish
    first, *rest = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    media = first["chorus"]["media"]
    assert [(m["kind"], m["mode"]) for m in media] == [("image", "ocr"), ("document", "ocr")]
    assert media[0]["text"] == LABEL and media[1]["page_count"] == 2
    assert all("chorus" not in chunk for chunk in rest)


def test_a_text_only_request_with_return_media_text_gets_an_empty_list(decoder):
    svc, _handle, _audio, _vision = service(decoder)
    body = complete(svc, chat("hello", max_tokens=1, chorus={"return_media_text": True}))
    assert body["chorus"] == {"media": []}


# ---------------------------------------------------------------------------------------------
# file parts refused


def test_a_file_that_is_not_a_pdf_is_unsupported_document_format(decoder):
    svc, _handle, _audio, vision = service(decoder)
    for mime in ("text/plain", "image/png", "application/msword"):
        error = refusal(svc, chat([file_part(b"hello there", mime)]))
        assert error.code == "unsupported_document_format" and error.param == "messages.0.content.0.file.file_data"
        assert "application/pdf" in error.message
    assert vision.calls == []


def test_file_id_alone_is_unsupported(decoder):
    svc, _handle, _audio, _vision = service(decoder)
    part = {"type": "file", "file": {"file_id": "file-abc123"}}
    error = refusal(svc, chat([{"type": "text", "text": "Summarise"}, part]))
    assert error.code == "file_id_unsupported" and error.param == "messages.0.content.1.file.file_id"
    assert "file_data" in error.message


@pytest.mark.parametrize(
    "file,code",
    [
        ({"filename": "a.pdf", "file_data": "data:application/pdf;base64,!!not base64!!"}, "invalid_base64"),
        ({"filename": "a.pdf", "file_data": "data:application/pdf;base64,QUJ"}, "invalid_base64"),
        ({"filename": "a.pdf", "file_data": "data:application/pdf,%PDF-1.7"}, "invalid_file"),  # not base64
        ({"filename": "a.pdf", "file_data": base64.b64encode(PDF).decode()}, "invalid_file"),  # no data URL
        ({"filename": "a.pdf"}, "invalid_file"),
    ],
    ids=["junk", "bad-padding", "not-base64", "bare-base64", "nothing"],
)
def test_bad_file_data_is_refused(decoder, file, code):
    svc, _handle, _audio, vision = service(decoder)
    error = refusal(svc, chat([{"type": "file", "file": file}]))
    assert error.code == code and error.param == "messages.0.content.0.file.file_data"
    assert vision.calls == []


def test_an_empty_document_is_invalid_media(decoder):
    svc, _handle, _audio, vision = service(decoder)
    error = refusal(svc, chat([{"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,"}}]))
    assert error.code == "invalid_media" and error.param == "messages.0.content.0" and vision.calls == []


def test_a_document_the_reader_refuses_names_the_part(decoder):
    svc, handle, _audio, _vision = service(decoder)
    error = refusal(svc, chat([{"type": "text", "text": "Read:"}, file_part(ENCRYPTED)]))
    assert error.code == "document_encrypted" and error.param == "messages.0.content.1"
    assert "password" in error.message and handle.requests == []


def test_documents_need_ocr_configured(decoder):
    clip = {"model_name": "tests/assets/tiny_clip.json", "pretrained": None, "random_init": True}
    config = ChorusConfig.model_validate({"ocr": None, "vision": clip, "fusion": {"image_mode": "embed", "allow_random_projectors": True}})
    vision = FakeVisionHandle()
    svc = ChatService(config, {"audio": FakeAudioHandle(), "image": vision}, FakeDecoderHandle(decoder))
    error = refusal(svc, chat([file_part()]))
    assert error.code == "ocr_not_configured" and error.param == "messages.0.content.0" and vision.calls == []


@pytest.mark.parametrize("role", ["assistant", "system", "developer"])
def test_a_file_part_outside_a_user_message_is_refused_by_the_schema(role):
    body = {"model": "chorus", "messages": [{"role": role, "content": [file_part()]}, {"role": "user", "content": "hi"}]}
    with pytest.raises(ValidationError, match="text parts"):
        ChatCompletionRequest.model_validate(body)
