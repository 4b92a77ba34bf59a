"""Spoken chat answers (serve/services/spoken.py) and the speech service's checks, over a scripted
decoder and a fake Speech handle: OpenAI's audio shapes, audio in step with the text, audio ids that
stand for what was said, and 400s naming the field."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from serve.config import ChorusConfig
from serve.errors import InvalidRequest, NotFound, ServiceError
from serve.protocol import ChatCompletionRequest
from serve.protocol.parse import parse_json_body
from serve.protocol.speech import SpeechRequest
from serve.services.chat import ChatService
from serve.services.speech import SpeechService
from serve.services.spoken import SpokenAnswers
from tests.helpers.scripted import ScriptedDecoder
from tests.helpers.voice import FakeSpeechHandle

ANSWER = ["Your parcel ", "ships today. ", "It arrives ", "on Monday."]


def _setup(handle: FakeSpeechHandle | None = None, **config: Any) -> tuple[ChatService, SpokenAnswers, FakeSpeechHandle]:
    cfg = ChorusConfig.model_validate(config)
    handle = handle or FakeSpeechHandle()
    return ChatService(cfg, {}, ScriptedDecoder(list(ANSWER))), SpokenAnswers(SpeechService(cfg, handle)), handle


def _req(**body: Any) -> ChatCompletionRequest:
    base = {"model": "chorus", "messages": [{"role": "user", "content": "Where is my parcel?"}]}
    return ChatCompletionRequest.model_validate({**base, **body})


SPOKEN = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}


def test_a_whole_answer_is_spoken_with_its_transcript() -> None:
    chat, spoken, handle = _setup()

    async def run() -> dict:
        req = spoken.check(_req(**SPOKEN))
        return await spoken.complete(req, await chat.complete(await chat.start(req), 0.0))

    payload = asyncio.run(run())
    message = payload["choices"][0]["message"]
    assert message["content"] is None
    audio = message["audio"]
    assert audio["transcript"] == "".join(ANSWER) and audio["id"].startswith("audio_")
    assert base64.b64decode(audio["data"]) == b"\0" * 48 * len("".join(ANSWER))
    assert handle.sentences == [("".join(ANSWER), "alloy", 1.0, "wav")]
    # the id stands for the transcript in a follow-up
    follow = spoken.check(_req(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "audio": {"id": audio["id"]}}]))
    assert follow.messages[1].content == "".join(ANSWER) and follow.messages[1].audio is None


def test_a_streamed_answer_interleaves_transcript_and_audio() -> None:
    chat, spoken, handle = _setup()

    async def run() -> list:
        req = spoken.check(_req(stream=True, modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"}))
        generation = await chat.start(req)
        _first, events = await chat.first_event(generation)
        groups = spoken.chunks(req, chat.chunks(generation, events, True, 0.0), generation.cancel)
        return [payload async for group in groups for payload in group]

    payloads = asyncio.run(run())
    assert payloads[-1] == "[DONE]"
    deltas = [p["choices"][0]["delta"] for p in payloads[:-1] if isinstance(p, dict) and p.get("choices")]
    assert all(d.get("content") is None for d in deltas)
    transcript = "".join(d["audio"].get("transcript", "") for d in deltas if d.get("audio"))
    assert transcript == "".join(ANSWER)
    audio = b"".join(base64.b64decode(d["audio"]["data"]) for d in deltas if d.get("audio", {}).get("data"))
    assert len(audio) == 48 * (len("Your parcel ships today.") + len("It arrives on Monday."))
    assert [s[0] for s in handle.sentences] == ["Your parcel ships today.", "It arrives on Monday."]
    assert all(s[3] == "pcm" for s in handle.sentences)
    finals = [i for i, p in enumerate(payloads) if isinstance(p, dict) and p.get("choices") and p["choices"][0]["finish_reason"]]
    last_audio = max(i for i, p in enumerate(payloads) if isinstance(p, dict) and p.get("choices") and p["choices"][0]["delta"].get("audio", {}).get("data"))
    assert finals and finals[0] > last_audio  # the finishing chunk waits for the last sentence's audio
    expires = [d["audio"]["expires_at"] for d in deltas if "expires_at" in d.get("audio", {})]
    assert len(expires) == 1


def test_speech_that_fails_ends_the_stream_with_an_error_and_stops_the_decoder() -> None:
    chat, spoken, _handle = _setup(FakeSpeechHandle(fail=True))
    stopped = []

    async def run() -> list:
        req = spoken.check(_req(stream=True, **SPOKEN))
        generation = await chat.start(req)
        _first, events = await chat.first_event(generation)
        cancel = lambda: stopped.append(True)  # noqa: E731
        return [p async for group in spoken.chunks(req, chat.chunks(generation, events, False, 0.0), cancel) for p in group]

    payloads = asyncio.run(run())
    assert payloads[-1] == "[DONE]" and payloads[-2]["error"]["type"] == "server_error"
    assert stopped == [True]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"modalities": ["text", "audio"]}, "audio"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
        ({"modalities": ["audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "ogg"}}, "audio.format"),
        ({"messages": [{"role": "user", "content": "x", "audio": {"id": "audio_1"}}]}, "messages.0"),
    ],
)
def test_chat_audio_fields_are_checked(body: dict, param: str) -> None:
    base = {"model": "chorus", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(InvalidRequest) as err:
        parse_json_body(__import__("json").dumps({**base, **body}).encode(), ChatCompletionRequest)
    assert err.value.param.startswith(param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**SPOKEN, "audio": {"voice": "nobody", "format": "wav"}}, "audio.voice"),
        ({**SPOKEN, "audio": {"voice": "alloy", "format": "aac"}}, "audio.format"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "audio": {"id": "audio_gone"}}]}, "messages.1.audio.id"),
    ],
)
def test_spoken_checks_name_the_field(body: dict, param: str) -> None:
    _chat, spoken, _handle = _setup()
    with pytest.raises(InvalidRequest) as err:
        spoken.check(_req(**body))
    assert err.value.param == param


def test_an_expired_audio_id_is_refused() -> None:
    _chat, spoken, _handle = _setup()
    spoken.ttl_s = -1
    audio_id = "audio_old"
    spoken.remember(audio_id, "said before")
    with pytest.raises(InvalidRequest):
        spoken.check(_req(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "audio": {"id": audio_id}}]))


def test_without_speech_audio_answers_are_not_found() -> None:
    cfg = ChorusConfig.model_validate({"speech": None})
    spoken = SpokenAnswers(SpeechService(cfg, None))
    with pytest.raises(NotFound):
        spoken.check(_req(**SPOKEN))
    with pytest.raises(NotFound):
        SpeechService(cfg, None).check(SpeechRequest(model="tts-1", input="hi", voice="alloy"))


@pytest.mark.parametrize(
    ("body", "status_class", "param"),
    [
        ({"voice": "nobody"}, InvalidRequest, "voice"),
        ({"response_format": "aac"}, InvalidRequest, "response_format"),
        ({"model": "tts-2"}, NotFound, "model"),
        ({"input": " \n "}, InvalidRequest, "input"),
        ({"input": "... !?"}, InvalidRequest, "input"),
    ],
)
def test_speech_service_checks(body: dict, status_class: type[ServiceError], param: str) -> None:
    service = SpeechService(ChorusConfig(), FakeSpeechHandle())
    req = SpeechRequest.model_validate({"model": "tts-1", "input": "Hello.", "voice": "alloy", **body})
    with pytest.raises(status_class) as err:
        service.check(req)
    assert err.value.param == param


def test_speech_input_limit_follows_the_config() -> None:
    service = SpeechService(ChorusConfig.model_validate({"speech": {"max_input_chars": 10}}), FakeSpeechHandle())
    with pytest.raises(InvalidRequest) as err:
        service.check(SpeechRequest(model="tts-1", input="x" * 11, voice="alloy"))
    assert err.value.param == "input"
