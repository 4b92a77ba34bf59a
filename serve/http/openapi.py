"""OpenAPI descriptions of the routes' request bodies and responses.

The routes take the raw `Request` (the body is read with a byte cap and its errors are mapped to
OpenAI's shape), so FastAPI has nothing to derive a request body from and /openapi.json would describe
none. Each route's decorator passes `openapi_extra=<function below>(app)`: the function returns the
operation's `requestBody`, `responses` and `security`, which refer to schemas under
`#/components/schemas/`, and makes sure the app's generated document carries those schemas (the
pydantic models' `$defs`, moved there) and the bearer security scheme. Schemas are built once, at
import, from the same pydantic models the routes validate with.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from modalities.llm.params import MAX_STOP_SEQUENCES
from serve.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)

REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, as 'Authorization: Bearer <key>' (only when the deployment configures keys)",
    }
}

# Every schema the operations refer to, by component name.
COMPONENTS: dict[str, dict[str, Any]] = {}


def _add(name: str, schema: dict[str, Any]) -> None:
    if COMPONENTS.setdefault(name, schema) != schema:
        raise ValueError(f"two different OpenAPI schemas named {name!r}")


# Response properties sent only when asked for (a completion's `chorus`, with chorus.return_media_text).
ON_REQUEST = frozenset({"chorus"})


def _all_required(schema: Any) -> Any:
    """Responses are `model_dump()`ed whole: every property is present (null where unset), except
    the extensions sent only on request (`ON_REQUEST`)."""
    if isinstance(schema, dict):
        if "properties" in schema:
            schema["required"] = [name for name in schema["properties"] if name not in ON_REQUEST]
        for value in schema.values():
            _all_required(value)
    elif isinstance(schema, list):
        for value in schema:
            _all_required(value)
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}], "default": None}


# What ChatCompletionRequest's validators refuse beyond its field types (each a 400), so that the
# document says it too: n is 1, at most 4 non-empty stop sequences, a message needs content (an
# assistant's may be tool calls instead), a tool message its tool_call_id and only it.
def _chat_request_constraints(schema: dict[str, Any], defs: dict[str, Any]) -> None:
    properties = schema["properties"]
    properties["n"] = {**_nullable({"type": "integer", "const": 1}), "title": "N", "description": "Only 1 is supported"}
    stop = {"type": "string", "minLength": 1}
    properties["stop"] = {
        "anyOf": [stop, {"type": "array", "items": stop, "maxItems": MAX_STOP_SEQUENCES}, {"type": "null"}],
        "default": None,
        "title": "Stop",
    }
    message = defs["ChatMessage"]
    message["required"] = ["role"]
    not_null = {"not": {"type": "null"}}
    message["anyOf"] = [
        {"required": ["content"], "properties": {"content": not_null}},
        {"required": ["tool_calls"], "properties": {"role": {"const": "assistant"}, "tool_calls": {"minItems": 1}}},
    ]
    message["allOf"] = [
        {
            "if": {"properties": {"role": {"const": "tool"}}},
            "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": not_null}},
            "else": {"properties": {"tool_call_id": {"type": "null"}}},
        },
        {
            "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
            "then": {"properties": {"tool_calls": {"anyOf": [{"type": "null"}, {"maxItems": 0}]}}},
        },
    ]


def _component(model: type[BaseModel], *, response: bool) -> dict[str, Any]:
    """`model`'s JSON schema (and its `$defs`) registered as components; returns a `$ref` to it."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode="serialization" if response else "validation")
    defs = schema.pop("$defs", {})
    if response:
        _all_required(schema)
        _all_required(defs)
    if model is ChatCompletionRequest:
        _chat_request_constraints(schema, defs)
    for name, sub in defs.items():
        _add(name, sub)
    _add(model.__name__, schema)
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _ref(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    _add(name, schema)
    return {"$ref": REF_TEMPLATE.format(model=name)}


ERROR = _component(ErrorResponse, response=True)
CHAT_REQUEST = _component(ChatCompletionRequest, response=False)
CHAT_COMPLETION = _component(ChatCompletion, response=True)
MODEL_LIST = _component(ModelList, response=True)
MODEL_CARD = _component(ModelCard, response=True)
STREAM_EVENT = {
    "type": "object",
    "description": "One server-sent event: `data` is a ChatCompletionChunk as JSON, an error body as JSON, or `[DONE]`",
    "required": ["data"],
    "properties": {"data": {"type": "string"}},
}
HEALTH = _ref(
    "Health",
    {
        "type": "object",
        "title": "Health",
        "required": ["status", "deployments"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "deployments": {
                "type": "object",
                "description": "Per deployment: its state ('ok', 'not_configured', 'unavailable') and the weights it runs",
                "additionalProperties": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}},
                },
            },
            "ingress": {
                "type": "object",
                "description": "The answering ingress replica: requests it holds in flight, per route",
                "properties": {"in_flight": {"type": "object", "additionalProperties": {"type": "integer"}}},
            },
            "store": {
                "type": "object",
                "description": "The response store: 'ok' (with its backend), 'not_configured' or 'unavailable'",
                "required": ["status"],
                "properties": {"status": {"type": "string"}},
            },
        },
    },
)

ERROR_DESCRIPTIONS = {
    "400": "The request is invalid (the offending field is named in `error.param`)",
    "401": "Incorrect or missing API key",
    "404": "Unknown model",
    "408": "The request body arrived too slowly",
    "413": "The request body is over the size limit",
    "429": "Rate limit reached for this API key (see Retry-After)",
    "500": "Internal error (our fault)",
    "503": "The service is overloaded or a deployment is down (see Retry-After)",
    "504": "The request did not complete within the service's deadline",
}


def _errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {"schema": ERROR}}}
        for status in statuses
    }


SECURITY = [{"bearerAuth": []}]

CHAT_COMPLETIONS: dict[str, Any] = {
    "summary": "Create a chat completion",
    "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST}}},
    "responses": {
        "200": {
            "description": "The completion; with `stream: true`, OpenAI's server-sent chunks ending `data: [DONE]`",
            "content": {
                "application/json": {"schema": CHAT_COMPLETION},
                # Before OpenAPI 3.2 (no itemSchema), an event stream's `schema` describes one event.
                "text/event-stream": {"schema": STREAM_EVENT},
            },
        },
        **_errors("400", "401", "404", "408", "413", "429", "500", "503", "504"),
    },
    "security": SECURITY,
}

MODELS: dict[str, Any] = {
    "summary": "List the models",
    "responses": {
        "200": {"description": "The chat model and the transcription models", "content": {"application/json": {"schema": MODEL_LIST}}},
        **_errors("401", "429", "500", "503"),
    },
    "security": SECURITY,
}

MODEL: dict[str, Any] = {
    "summary": "Retrieve a model (frameworks call it as a health check)",
    "responses": {
        "200": {"description": "The model's card", "content": {"application/json": {"schema": MODEL_CARD}}},
        **_errors("401", "404", "429", "500", "503"),
    },
    "security": SECURITY,
}

METRICS: dict[str, Any] = {
    "summary": "Prometheus metrics of this node (ray_chorus_*, ray_serve_*), behind the API keys",
    "responses": {
        "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **_errors("401", "404", "429", "500", "503"),
    },
    "security": SECURITY,
}

HEALTH_CHECK: dict[str, Any] = {
    "summary": "Each deployment's state and the weights it runs",
    "responses": {
        "200": {"description": "Every deployment is up (or not configured)", "content": {"application/json": {"schema": HEALTH}}},
        "503": {"description": "A deployment is down", "content": {"application/json": {"schema": HEALTH}}},
    },
}


def document(app: FastAPI) -> None:
    """Have `app`'s generated OpenAPI document carry COMPONENTS and the security scheme (idempotent).

    FastAPI builds `components` only from the models its routes declare, and `openapi_extra` reaches
    only the operation; overriding `app.openapi` is FastAPI's documented way to extend the document."""
    if getattr(app, "_chorus_components", False):
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        doc = generate()  # cached by FastAPI after the first call
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name, schema in COMPONENTS.items():
            if schemas.setdefault(name, copy.deepcopy(schema)) != schema:
                raise ValueError(f"OpenAPI component {name!r} is already defined differently")
        components.setdefault("securitySchemes", {}).update(copy.deepcopy(SECURITY_SCHEMES))
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    app._chorus_components = True  # type: ignore[attr-defined]


def _extra(app: FastAPI, operation: dict[str, Any]) -> dict[str, Any]:
    document(app)
    return copy.deepcopy(operation)  # FastAPI merges it into the operation it builds


def chat_completions(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for POST /v1/chat/completions."""
    return _extra(app, CHAT_COMPLETIONS)


def models(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for GET /v1/models."""
    return _extra(app, MODELS)


def model(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for GET /v1/models/{model}."""
    return _extra(app, MODEL)


def metrics(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for GET /metrics."""
    return _extra(app, METRICS)


def health(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for GET /health."""
    return _extra(app, HEALTH_CHECK)
