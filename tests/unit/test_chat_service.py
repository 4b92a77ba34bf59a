"""The chat service without Ray: fake deployment handles around a real `LLMDecoder` (tiny random
Llama, byte-level tokenizer) and a fake audio encoder. What reaches the decoder, what comes back in
OpenAI's shapes, and which refusals the service raises."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest

from modalities.llm.runtime import LLMRuntime
from serve.config import ChorusConfig
from serve.deployments.contracts import EncodedItem
from serve.deployments.llm import LLMDecoder
from serve.errors import InvalidRequest, NotFound
from serve.protocol import ChatCompletionRequest
from serve.services.chat import DONE, ChatService
from tests.helpers.tokenizer import tiny_chat_tokenizer
from tests.unit.test_llm import build_model

AUDIO_FRAMES, AUDIO_DIM = 10, 12
TRANSCRIPT = "where is my parcel"


class _Remote:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class FakeStream:
    """Serve's streaming response: async-iterable, cancellable."""

    def __init__(self, events) -> None:
        self.events = events
        self.cancelled = False

    def __aiter__(self):
        return self.events.__aiter__()

    def cancel(self) -> None:
        self.cancelled = True


class FakeDecoderHandle:
    def __init__(self, decoder: LLMDecoder) -> None:
        self.decoder = decoder
        self.requests: list[Any] = []
        self.streams: list[FakeStream] = []
        self.info = _Remote(self._info)
        self.generate = _Remote(self._generate)

    async def _info(self) -> dict[str, Any]:
        return self.decoder.info()

    def _generate(self, request) -> FakeStream:
        self.requests.append(request)
        self.streams.append(FakeStream(self.decoder.generate(request)))
        return self.streams[-1]

    def options(self, **_options: Any) -> FakeDecoderHandle:
        return self


class FakeAudioHandle:
    def __init__(self) -> None:
        self.calls: list[tuple[bool, bool]] = []
        self.encode_item = _Remote(self._encode_item)

    async def _encode_item(self, data: bytes, want_features: bool, want_text: bool, kind: str = "audio") -> EncodedItem:
        self.calls.append((want_features, want_text))
        features = np.ones((AUDIO_FRAMES, AUDIO_DIM), dtype=np.float16) if want_features else None
        return EncodedItem(features, TRANSCRIPT if want_text else None)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_chat_tokenizer()


@pytest.fixture(scope="module")
def decoder(tokenizer) -> LLMDecoder:
    config = {"fusion": {"allow_random_projectors": True}, "llm": {"threads": 1}}
    return LLMDecoder(config, runtime_factory=lambda _config: LLMRuntime(build_model(tokenizer), tokenizer))


def service(decoder: LLMDecoder, **overrides: Any) -> tuple[ChatService, FakeDecoderHandle, FakeAudioHandle]:
    config = ChorusConfig.model_validate({"fusion": {"allow_random_projectors": True}, **overrides})
    handle, audio = FakeDecoderHandle(decoder), FakeAudioHandle()
    return ChatService(config, {"audio": audio}, handle), handle, audio


def chat(content: Any, **extra: Any) -> ChatCompletionRequest:
    body = {"model": "chorus", "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}
    return ChatCompletionRequest.model_validate(body)


def audio_part() -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF....").decode(), "format": "wav"}}


def prompt_length(tokenizer, content: str) -> int:
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False))


def complete(svc: ChatService, req: ChatCompletionRequest) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        return await svc.complete(await svc.start(req), started=0.0)

    return asyncio.run(run())


def test_text_completion_in_openai_shape(decoder, tokenizer) -> None:
    svc, handle, _audio = service(decoder)
    body = complete(svc, chat("hello", max_tokens=5))
    assert body["object"] == "chat.completion" and body["model"] == "chorus"
    assert body["usage"]["prompt_tokens"] == prompt_length(tokenizer, "hello")
    assert 1 <= body["usage"]["completion_tokens"] <= 5
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert handle.requests[0].params.max_tokens == 5 and handle.requests[0].requested_max_tokens == 5


def test_stream_groups_end_with_done_and_match_the_completion(decoder) -> None:
    svc, _handle, _audio = service(decoder)
    req = chat("hello", max_tokens=6, stream=True, stream_options={"include_usage": True})

    async def run() -> list[list[Any]]:
        generation = await svc.start(req)
        _first, events = await svc.first_event(generation)
        return [group async for group in svc.chunks(generation, events, include_usage=True, started=0.0)]

    groups = asyncio.run(run())
    assert groups[0][0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert groups[-1][-1] == DONE and groups[-1][-2]["usage"]["completion_tokens"] >= 1
    streamed = "".join(
        p["choices"][0]["delta"].get("content", "") for g in groups for p in g if isinstance(p, dict) and p["choices"]
    )
    assert streamed == complete(svc, chat("hello", max_tokens=6))["choices"][0]["message"]["content"]


def test_prompt_over_the_context_is_refused_before_any_token(decoder) -> None:
    svc, _handle, _audio = service(decoder)
    with pytest.raises(InvalidRequest) as info:
        complete(svc, chat("hi", max_tokens=decoder.runtime.max_context))
    assert info.value.code == "context_length_exceeded" and info.value.param == "messages"


def test_transcript_mode_puts_the_encoders_text_in_the_prompt(decoder, tokenizer) -> None:
    svc, handle, audio = service(decoder)
    body = complete(svc, chat([{"type": "text", "text": "listen: "}, audio_part()], max_tokens=2))
    assert audio.calls == [(False, True)]  # transcript only
    assert body["usage"]["prompt_tokens"] == prompt_length(tokenizer, "listen: " + TRANSCRIPT)
    assert handle.requests[0].media == {}


def test_embed_mode_counts_the_projectors_soft_tokens(decoder, tokenizer) -> None:
    svc, handle, audio = service(decoder)
    body = complete(svc, chat([audio_part()], max_tokens=2, chorus={"fusion": "embed"}))
    assert audio.calls == [(True, False)]
    stack = 4  # the untrained audio projector the registry names (stack4_swiglu)
    soft_tokens = -(-AUDIO_FRAMES // stack)
    assert body["usage"]["prompt_tokens"] == prompt_length(tokenizer, "<audio></audio>") + soft_tokens
    assert set(handle.requests[0].media) == {0}


def test_refusals(decoder) -> None:
    svc, _handle, _audio = service(decoder)
    with pytest.raises(NotFound):
        complete(svc, chat("hi", model="gpt-4o"))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"png").decode()}}
    with pytest.raises(InvalidRequest) as info:
        complete(svc, chat([image]))
    assert info.value.code == "vision_not_configured" and info.value.param == "messages.0.content.0"
    small = service(decoder, limits={"max_text_chars": 3})[0]
    with pytest.raises(InvalidRequest) as info:
        complete(small, chat("four"))
    assert info.value.code == "text_too_long"
