"""Server-sent events as OpenAI streams them: chat chunks as `data: <json>\n\n` with `data: [DONE]` last;
Responses events named by an `event:` line."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"


def event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def encode(groups: AsyncIterator[Iterable[dict[str, Any] | str]]) -> AsyncIterator[bytes]:
    """One write per group of payloads."""
    async for group in groups:
        yield b"".join(event(payload) for payload in group)


async def encode_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Responses API events: `event: <type>` then `data: <json>`, one write each; no `[DONE]`."""
    async for payload in events:
        yield f"event: {payload['type']}\n".encode() + event(payload)
