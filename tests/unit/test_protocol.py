"""Request validation and media extraction, without Ray or HTTP."""

from __future__ import annotations

import asyncio
import base64

import pytest
from pydantic import ValidationError

from fusion.prompt import MediaItem
from serve.errors import InvalidRequest
from serve.protocol import ChatCompletionRequest
from serve.protocol.parse import parse_json_body, validation_error
from serve.services.media import decode_image_url, extract


def req(**kwargs):
    return ChatCompletionRequest.model_validate({"model": "chorus", "messages": [{"role": "user", "content": "hi"}], **kwargs})


def test_max_completion_tokens_wins():
    assert req(max_tokens=5, max_completion_tokens=7).requested_max_tokens() == 7
    assert req(max_tokens=5).requested_max_tokens() == 5


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"n": 3}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["a"] * 5}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"functions": []}, "functions"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"chorus": {"fusion": "telepathy"}}, "chorus.fusion"),
    ],
)
def test_invalid_fields_name_their_param(kwargs, param):
    body = {"model": "chorus", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    err = validation_error(info.value.errors(), body)
    assert isinstance(err, InvalidRequest) and err.param == param
    assert "Input should" not in err.message and err.message.startswith(("Invalid", "Unsupported", "Missing"))


@pytest.mark.parametrize(
    "raw,param,code,words",
    [
        (b'{"model": "chorus", "messages": [{"role": "user", "content": 42}]}', "messages.0.content", "invalid_type",
         "expected a string or an array, but got an integer"),
        (b'{"model": "chorus", "messages": [{"role": "user", "content": [{"type": "video_url"}]}]}',
         "messages.0.content.0.type", "invalid_value", "'video_url' is not one of"),
        (b'{"model": "chorus", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
         "messages.0.content.0.text", "missing_required_parameter", "Missing required parameter"),
        (b'{"model": "chorus", "messages": [{"role": "user", "content": "x"}], "functions": []}', "functions",
         "unsupported_parameter", "'functions' is not supported"),
        (b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}', "model", "invalid_unicode", "surrogate"),
        (b'{"model": "chorus", "messages": [{"role": "user", "content": "a\\udfffb"}]}', "messages.0.content",
         "invalid_unicode", "not valid Unicode"),
        (b'{"model": "chorus", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}", None, "invalid_json", "nested too deeply"),
        (b'{"model": "chorus", "messages": ' + b"[" * 40 + b"]" * 40 + b"}", None, "invalid_json", "nested too deeply"),
        (b'{"model": "chorus", "seed": ' + b"9" * 5000 + b', "messages": []}', None, "invalid_json", "too many digits"),
        (b'{"model": "chorus", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b"0" * 30 + b"}",
         "max_tokens", "invalid_value", "less than or equal"),
    ],
)
def test_the_json_boundary_refuses_in_words(raw, param, code, words):
    """Hostile JSON is a 400 naming the field, never a 500: lone surrogates (which no tokenizer
    takes), nesting past the limit (and past the parser's recursion), integers past Python's digit
    limit, pydantic's union tags kept out of the message."""
    with pytest.raises(InvalidRequest) as info:
        parse_json_body(raw, ChatCompletionRequest)
    err = info.value
    assert err.code == code and words in err.message, err.message
    if param is not None:
        assert err.param == param
    err.body()  # and its body can be built


def test_stop_string_becomes_list():
    assert req(stop="END").stop == ["END"]


def test_assistant_media_refused():
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(
            {
                "model": "chorus",
                "messages": [
                    {"role": "assistant", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
                ],
            }
        )


def test_extract_orders_media_and_maps_developer_role():
    audio = base64.b64encode(b"RIFFxxxx").decode()
    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG....").decode()
    request = ChatCompletionRequest.model_validate(
        {
            "model": "chorus",
            "messages": [
                {"role": "developer", "content": "Be kind."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": png}},
                        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                    ],
                },
            ],
        }
    )
    messages, media = asyncio.run(extract(request, fetcher=None, max_media=4))
    assert messages[0].role == "system"
    assert messages[1].parts == ["look", MediaItem("image", 0), MediaItem("audio", 1)]
    assert [m.spec.kind for m in media] == ["image", "audio"] and media[1].data == b"RIFFxxxx"
    assert media[0].param == "messages.1.content.1"


def test_too_many_media_items():
    png = "data:image/png;base64," + base64.b64encode(b"x").decode()
    parts = [{"type": "image_url", "image_url": {"url": png}}] * 3
    request = ChatCompletionRequest.model_validate({"model": "chorus", "messages": [{"role": "user", "content": parts}]})
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(extract(request, fetcher=None, max_media=2))
    assert info.value.code == "too_many_media" and info.value.param == "messages.0.content.2"


@pytest.mark.parametrize(
    "url,code",
    [
        ("https://example.com/cat.png", "remote_url_disabled"),
        ("data:text/plain;base64,aGk=", "invalid_image_url"),
        ("data:image/png,rawbytes", "invalid_image_url"),
        ("data:image/png;base64,@@@", "invalid_base64"),
        ("file:///etc/passwd", "invalid_image_url"),
    ],
)
def test_bad_image_urls(url, code):
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(decode_image_url(url, "p", fetcher=None))
    assert info.value.code == code
