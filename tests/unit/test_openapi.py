"""/openapi.json describes the request bodies and responses of routes that read the raw Request."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from serve.errors import PayloadTooLarge, model_not_found
from serve.http.ingress import app
from serve.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
)
from serve.protocol.transcription import TIMESTAMP_GRANULARITIES, TRANSCRIPTION_FORMATS

ROUTES = {
    ("post", "/v1/chat/completions"): {"200", "400", "401", "404", "408", "413", "429", "500", "503", "504"},
    ("post", "/v1/audio/transcriptions"): {"200", "400", "401", "404", "408", "413", "429", "500", "503", "504"},
    ("post", "/v1/audio/translations"): {"200", "400", "401", "404", "408", "413", "429", "500", "503", "504"},
    ("get", "/v1/models"): {"200", "401", "429", "500", "503"},
    ("get", "/v1/models/{model}"): {"200", "401", "404", "429", "500", "503"},
    ("get", "/metrics"): {"200", "401", "404", "429", "500", "503"},
    ("get", "/health"): {"200", "503"},
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return app.openapi()


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for `schema` whose `#/components/...` references resolve within `doc`."""
    root = {**schema, "components": doc["components"]}
    jsonschema.Draft202012Validator.check_schema(root)
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves_and_every_component_is_valid_json_schema(doc):
    found = refs(doc)
    assert "#/components/schemas/ChatCompletionRequest" in found
    for ref in found:
        assert isinstance(resolve(doc, ref), dict), ref
    for name, schema in doc["components"]["schemas"].items():
        assert "$defs" not in schema, name  # moved into components/schemas
        jsonschema.Draft202012Validator.check_schema(schema)
    bearer = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_documented_statuses(doc, method, path):
    operation = doc["paths"][path][method]
    assert set(operation["responses"]) == ROUTES[(method, path)]
    assert "422" not in operation["responses"]  # FastAPI's validation errors never reach clients
    for status, response in operation["responses"].items():
        if status.startswith(("4", "5")) and path != "/health":
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert ("security" in operation) == (path != "/health")


CONSTRAINED = {"n", "stop"}


def test_chat_request_body_is_the_pydantic_schema(doc):
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}

    expected = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = expected.pop("$defs")
    schemas = doc["components"]["schemas"]
    documented = schemas["ChatCompletionRequest"]
    # pydantic's schema, plus what the validators add to a few fields (checked in the next test)
    assert {k: v for k, v in documented.items() if k != "properties"} == {k: v for k, v in expected.items() if k != "properties"}
    assert set(documented["properties"]) == set(expected["properties"])
    for name, prop in expected["properties"].items():
        if name not in CONSTRAINED:
            assert documented["properties"][name] == prop, name
    assert {name: schemas[name] for name in defs if name != "ChatMessage"} == {k: v for k, v in defs.items() if k != "ChatMessage"}
    assert schemas["ChatMessage"]["required"] == ["role"]  # content, or an assistant's tool_calls (anyOf)
    assert len(schemas["ChatMessage"]["anyOf"]) == 2
    assert set(documented["required"]) == {"messages", "model"}


GOOD_CHAT = {
    "model": "chorus",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        ]},
    ],
    "max_tokens": 2,
    "n": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0.0,
    "logprobs": False,
    "stop": ["a", "b", "c", "d"],
    "stream": True,
    "stream_options": {"include_usage": True},
    "chorus": {"fusion": "transcript"},
}
BAD_CHAT = {
    "no model": {"messages": GOOD_CHAT["messages"]},
    "no messages": {**GOOD_CHAT, "messages": []},
    "unknown field": {**GOOD_CHAT, "functions": []},  # extra="forbid"
    "max_tokens 0": {**GOOD_CHAT, "max_tokens": 0},
    "temperature 3": {**GOOD_CHAT, "temperature": 3},
    "unknown role": {**GOOD_CHAT, "messages": [{"role": "wizard", "content": "hi"}]},
    "no content": {**GOOD_CHAT, "messages": [{"role": "user"}]},
    "null content": {**GOOD_CHAT, "messages": [{"role": "user", "content": None}]},
    "audio format": {**GOOD_CHAT, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "aac"}}]}]},
    "n 2": {**GOOD_CHAT, "n": 2},
    "n 0": {**GOOD_CHAT, "n": 0},
    "penalty": {**GOOD_CHAT, "frequency_penalty": 2.5},
    "top_logprobs": {**GOOD_CHAT, "logprobs": True, "top_logprobs": 21},
    "tool message without id": {**GOOD_CHAT, "messages": [{"role": "tool", "content": "{}"}]},
    "tool_call_id on a user message": {**GOOD_CHAT, "messages": [{"role": "user", "content": "hi", "tool_call_id": "c"}]},
    "tool_calls on a user message": {**GOOD_CHAT, "messages": [{"role": "user", "content": "hi", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
    "tool name with a space": {**GOOD_CHAT, "tools": [{"type": "function", "function": {"name": "look up"}}]},
    "response_format kind": {**GOOD_CHAT, "response_format": {"type": "yaml"}},
    "5 stops": {**GOOD_CHAT, "stop": ["a", "b", "c", "d", "e"]},
    "empty stop": {**GOOD_CHAT, "stop": ""},
    "empty stop in list": {**GOOD_CHAT, "stop": ["a", ""]},
}


def test_chat_request_schema_and_model_agree(doc):
    """The documented schema accepts what the model accepts and refuses what it refuses."""
    check = validator(doc, {"$ref": "#/components/schemas/ChatCompletionRequest"})
    ChatCompletionRequest.model_validate(GOOD_CHAT)
    check.validate(GOOD_CHAT)
    for name, body in BAD_CHAT.items():
        assert not check.is_valid(body), name
        with pytest.raises(ValueError):
            ChatCompletionRequest.model_validate(body)


SEGMENT = {"id": 0, "seek": 0, "start": 0.0, "end": 1.5, "text": "hi", "tokens": [50364, 2421], "temperature": 0.0,
           "avg_logprob": -0.3, "compression_ratio": 0.8, "no_speech_prob": 0.01}  # fmt: skip


@pytest.mark.parametrize("route", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_audio_bodies_are_multipart(doc, route):
    body = doc["paths"][route]["post"]["requestBody"]
    assert body["required"] is True and list(body["content"]) == ["multipart/form-data"]
    schema = resolve(doc, body["content"]["multipart/form-data"]["schema"]["$ref"])
    assert schema["required"] == ["file", "model"]
    properties = schema["properties"]
    assert properties["file"] == {**properties["file"], "type": "string", "format": "binary"}
    assert properties["model"]["type"] == properties["prompt"]["type"] == "string"
    assert tuple(properties["response_format"]["enum"]) == TRANSCRIPTION_FORMATS
    assert (properties["temperature"]["minimum"], properties["temperature"]["maximum"]) == (0, 1.0)
    if route.endswith("transcriptions"):
        assert properties["language"]["type"] == "string"
        assert tuple(properties["timestamp_granularities[]"]["items"]["enum"]) == TIMESTAMP_GRANULARITIES
    else:  # OpenAI's translations take neither
        assert "language" not in properties and "timestamp_granularities[]" not in properties
    ok = doc["paths"][route]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/plain"}
    check = validator(doc, ok["application/json"]["schema"])
    check.validate({"text": "hello"})
    assert not check.is_valid({"transcript": "hello"})


def test_verbose_transcription_schema(doc):
    check = validator(doc, {"$ref": "#/components/schemas/VerboseTranscription"})
    head = {"task": "transcribe", "language": "english", "duration": 1.5, "text": "hi"}
    check.validate({**head, "segments": [SEGMENT]})
    check.validate({**head, "words": [{"word": "hi", "start": 0.1, "end": 0.4}]})  # only words asked for
    check.validate({**head, "task": "translate", "segments": [SEGMENT], "words": []})
    assert not check.is_valid({**head, "segments": [{"id": 0, "start": 0.0, "end": 1.5, "text": "hi"}]})
    assert not check.is_valid({**head, "words": [{"word": "hi", "start": 0.1}]})
    assert not check.is_valid({**head, "task": "summarize"})


def test_error_and_success_bodies_match_their_schemas(doc):
    error = validator(doc, {"$ref": "#/components/schemas/ErrorResponse"})
    error.validate(model_not_found("gpt-4o").body())
    error.validate(PayloadTooLarge("too big", code="request_too_large").body())
    # OpenAI's shape: all four keys, always (null where unset)
    assert not error.is_valid({"error": {"message": "x", "type": "invalid_request_error"}})
    assert not error.is_valid({"detail": "Not Found"})

    completion = ChatCompletion(
        id="chatcmpl-1", created=1, model="chorus",
        choices=[Choice(message=ResponseMessage(content="Paris"), finish_reason="stop")],
        usage=Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
    ).model_dump()
    chat_ok = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat_ok) == {"application/json", "text/event-stream"}
    event = validator(doc, chat_ok["text/event-stream"]["schema"])  # one event, as schemathesis reads streams
    event.validate({"data": "[DONE]", "event": "message"})
    assert not event.is_valid({"event": "message"})
    validator(doc, chat_ok["application/json"]["schema"]).validate(completion)
    assert not validator(doc, chat_ok["application/json"]["schema"]).is_valid({**completion, "choices": None})

    models = ModelList(data=[ModelCard(id="chorus", created=1)]).model_dump()
    models_ok = doc["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    validator(doc, models_ok).validate(models)

    health = doc["paths"]["/health"]["get"]["responses"]
    for status in ("200", "503"):
        check = validator(doc, health[status]["content"]["application/json"]["schema"])
        check.validate({"status": "ok", "deployments": {"llm_decoder": {"status": "ok", "model": "x"}}})
        assert not check.is_valid({"status": "fine", "deployments": {}})
