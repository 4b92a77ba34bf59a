"""What a realtime session has to send: server events in order, bounded in bytes so that a client
that stops reading cannot make the server hold its audio forever (the socket is closed instead)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from typing import Any


class Outbox:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._events: deque[tuple[dict[str, Any], str]] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self.overflowed = False
        self.overflow = asyncio.Event()  # set once the client is too far behind
        self.closed = False

    def put(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        event = {"event_id": f"event_{uuid.uuid4().hex[:20]}", **event}
        text = json.dumps(event, separators=(",", ":"))
        self._events.append((event, text))
        self._bytes += len(text)
        if self._bytes > self.max_bytes and len(self._events) > 1:  # one event, however big, may always wait
            self.overflowed = True  # the socket is closed
            self.overflow.set()
        self._ready.set()

    def purge_audio(self, response_id: str) -> int:
        """Drop the audio of `response_id` not sent yet (a barge-in); returns how many deltas."""
        keep = deque()
        dropped = 0
        for event, text in self._events:
            if event.get("type") == "response.output_audio.delta" and event.get("response_id") == response_id:
                dropped += 1
                self._bytes -= len(text)
            else:
                keep.append((event, text))
        self._events = keep
        return dropped

    async def get(self) -> tuple[dict[str, Any], str]:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        event, text = self._events.popleft()
        self._bytes -= len(text)
        return event, text

    def close(self) -> None:
        self.closed = True
        self._events.clear()
        self._bytes = 0
        self._ready.set()
