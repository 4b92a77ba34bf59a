"""OpenAPI descriptions of the stored APIs' routes (Responses, Conversations), built with the helpers
and shared schemas of `openapi.py` (see there for how `openapi_extra` reaches the document)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from serve.protocol.responses import (
    ConversationCreateRequest,
    ConversationItemsRequest,
    ConversationUpdateRequest,
    ResponseCreateRequest,
)

from .openapi import SECURITY, _component, _errors, _extra, _ref

RESPONSE_REQUEST = _component(ResponseCreateRequest, response=False)
CONVERSATION_REQUEST = _component(ConversationCreateRequest, response=False)
CONVERSATION_UPDATE = _component(ConversationUpdateRequest, response=False)
CONVERSATION_ITEMS_REQUEST = _component(ConversationItemsRequest, response=False)


def _object(name: str, kind: str, required: dict[str, Any]) -> dict[str, Any]:
    properties = {"object": {"type": "string", "const": kind}, **required}
    return _ref(name, {"type": "object", "title": name, "required": list(properties), "properties": properties})


RESPONSE = _object(
    "Response",
    "response",
    {
        "id": {"type": "string"},
        "created_at": {"type": "integer"},
        "status": {"type": "string", "enum": ["completed", "in_progress", "incomplete", "failed", "cancelled"]},
        "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object"}},
    },
)
ITEM = _ref("Item", {"type": "object", "title": "Item", "required": ["id", "type"], "properties": {"id": {"type": "string"}, "type": {"type": "string"}}})
ITEM_LIST = _object(
    "ItemList",
    "list",
    {
        "data": {"type": "array", "items": ITEM},
        "first_id": {"type": ["string", "null"]},
        "last_id": {"type": ["string", "null"]},
        "has_more": {"type": "boolean"},
    },
)
CONVERSATION = _object(
    "Conversation",
    "conversation",
    {"id": {"type": "string"}, "created_at": {"type": "integer"}, "metadata": {"type": "object", "additionalProperties": {"type": "string"}}},
)
CONVERSATION_LIST = _object(
    "ConversationList",
    "list",
    {
        "data": {"type": "array", "items": CONVERSATION},
        "first_id": {"type": ["string", "null"]},
        "last_id": {"type": ["string", "null"]},
        "has_more": {"type": "boolean"},
    },
)


def _deleted(name: str, kind: str) -> dict[str, Any]:
    return _object(name, kind, {"id": {"type": "string"}, "deleted": {"type": "boolean", "const": True}})


RESPONSE_DELETED = _deleted("ResponseDeleted", "response.deleted")
CONVERSATION_DELETED = _deleted("ConversationDeleted", "conversation.deleted")
RESPONSES_EVENT = {
    "type": "object",
    "description": "One server-sent event: `event` names it (response.created, response.output_text.delta, "
    "response.completed, ...), `data` is the event as JSON",
    "required": ["event", "data"],
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
}
STORED_ERRORS = _errors("400", "401", "404", "429", "500", "503")
BODY_ERRORS = _errors("400", "401", "404", "408", "413", "429", "500", "503", "504")  # routes that read a body
PAGE_PARAMETERS = [
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}, "description": "List after this item id"},
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    {"name": "order", "in": "query", "required": False, "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"}},
]


def _operation(summary: str, answer: dict[str, Any], *, request: dict[str, Any] | None = None, errors: dict[str, Any] = STORED_ERRORS, **extra: Any) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": summary, "content": {"application/json": {"schema": answer}}}, **errors},
        "security": SECURITY,
        **extra,
    }
    if request is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": request}}}
    return operation


RESPONSES_CREATE = _operation(
    "Create a response (stored by default; with previous_response_id or conversation, it continues one)",
    RESPONSE,
    request=RESPONSE_REQUEST,
    errors=BODY_ERRORS,
)
RESPONSES_CREATE["responses"]["200"]["content"]["text/event-stream"] = {"schema": RESPONSES_EVENT}


def responses_create(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for POST /v1/responses."""
    return _extra(app, RESPONSES_CREATE)


def response_get(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for GET /v1/responses/{id} and POST /v1/responses/{id}/cancel."""
    return _extra(app, _operation("A stored response", RESPONSE))


def response_delete(app: FastAPI) -> dict[str, Any]:
    return _extra(app, _operation("Delete a stored response, its items and media", RESPONSE_DELETED))


def item_list(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for the paginated item lists."""
    return _extra(app, _operation("Items, paginated", ITEM_LIST, parameters=PAGE_PARAMETERS))


def item_get(app: FastAPI) -> dict[str, Any]:
    return _extra(app, _operation("One conversation item", ITEM))


def conversation_list(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for GET /v1/conversations (a Chorus extension: OpenAI has no such route)."""
    parameters = [{**PAGE_PARAMETERS[0], "description": "List after this conversation id"}, *PAGE_PARAMETERS[1:]]
    summary = "The caller's conversations, paginated by creation time (a Chorus extension, not in OpenAI's API)"
    return _extra(app, _operation(summary, CONVERSATION_LIST, parameters=parameters))


def conversation_create(app: FastAPI) -> dict[str, Any]:
    return _extra(app, _operation("Create a conversation (up to 20 items, 16 metadata pairs)", CONVERSATION, request=CONVERSATION_REQUEST, errors=BODY_ERRORS))


def conversation_get(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for GET /v1/conversations/{id} and DELETE of one of its items."""
    return _extra(app, _operation("A conversation", CONVERSATION))


def conversation_update(app: FastAPI) -> dict[str, Any]:
    return _extra(app, _operation("Replace a conversation's metadata", CONVERSATION, request=CONVERSATION_UPDATE, errors=BODY_ERRORS))


def conversation_delete(app: FastAPI) -> dict[str, Any]:
    return _extra(app, _operation("Delete a conversation, its items and their media", CONVERSATION_DELETED))


def conversation_items_create(app: FastAPI) -> dict[str, Any]:
    return _extra(app, _operation("Add items to a conversation", ITEM_LIST, request=CONVERSATION_ITEMS_REQUEST, errors=BODY_ERRORS))
