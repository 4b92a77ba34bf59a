"""Server-sent events as OpenAI streams them: `data: <json>\n\n` per payload, `data: [DONE]` last."""

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
