"""What the store hands back, and its one error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class NotFound(LookupError):
    """An object the caller named does not exist for this owner; `param` names the request field
    that named it (the ingress turns this into OpenAI's 404 error body)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ResponseRecord:
    id: str
    status: str  # in_progress | completed | incomplete | failed | cancelled
    body: dict  # the Response object as the API returns it
    model: str
    created_at: float
    previous_response_id: str | None
    conversation_id: str | None


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    created_at: float
    metadata: dict[str, str]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list endpoint, in OpenAI's list shape (`data`, `has_more`, `first_id`, `last_id`):
    item dicts, or the conversations list's ConversationRecords."""

    items: list[T]
    has_more: bool
    first_id: str | None
    last_id: str | None


@dataclass(frozen=True)
class AuditEntry:
    """One request's bookkeeping, never its content: the store redacts every string before writing."""

    at: float
    key_id: str
    route: str
    method: str
    status: int
    request_id: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    flags: list[str] = field(default_factory=list)  # short codes, e.g. "injection_suspected"
    response_id: str | None = None
