"""The `/v1/realtime` WebSocket: admission, the read loop and the write loop of one session.

Auth as OpenAI's: `Authorization: Bearer <key>` on the handshake, or (browsers cannot set headers)
the subprotocol `openai-insecure-api-key.<key>`. The model is the `model` query parameter. A refused
handshake is an HTTP status (403 for a bad key, 404 for an unknown model — Starlette answers a
WebSocket closed before `accept` with 403, so both are 403 with the reason in the close frame).

Close codes: 1000 the client closed, or the session reached `realtime.max_session_s`; 1008 the client
did not read its events (more than `realtime.max_pending_bytes` queued, or one send not taken by the
connection within `realtime.send_timeout_s`); 1009 an event over 16 MiB; 1011 a fault of ours; 1013
this replica holds `realtime.max_sessions` already. Every other problem with an event is an `error`
event, and the session goes on. However the socket ends, the session is closed and no longer counted.

What is "pending" is what the connection has not taken: the writer hands each event on as soon as it
can (the reader yields to it after every client event, so a burst of client events handled at once
is not mistaken for a client that does not read). Behind Ray's Python proxy (the default ingress)
the replica's sends never wait: the proxy takes every event and holds what the client has not read,
so neither limit sees such a client there (docs/voice.md); behind HAProxy (`CHORUS_HAPROXY=1`) the
replica's sends wait on the client's TCP connection, and both limits apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fastapi import WebSocket, WebSocketDisconnect

from serve.errors import ServiceError
from serve.protocol.realtime import MAX_EVENT_BYTES
from serve.services.realtime import RealtimeSession
from serve.services.realtime_outbox import Outbox

log = logging.getLogger("ray.serve.chorus.realtime")
KEY_SUBPROTOCOL = "openai-insecure-api-key."
NORMAL, POLICY, TOO_BIG, INTERNAL, TRY_AGAIN = 1000, 1008, 1009, 1011, 1013


class Sessions:
    """The sessions this ingress replica holds (for the cap and for tests that count them)."""

    def __init__(self) -> None:
        self.open = 0


def authorization(ws: WebSocket) -> str | None:
    header = ws.headers.get("authorization")
    if header:
        return header
    for proto in _subprotocols(ws):
        if proto.startswith(KEY_SUBPROTOCOL):
            return "Bearer " + proto[len(KEY_SUBPROTOCOL):]
    return None


def _subprotocols(ws: WebSocket) -> list[str]:
    raw = ws.headers.get("sec-websocket-protocol") or ""
    return [p.strip() for p in raw.split(",") if p.strip()]


async def serve_session(
    ws: WebSocket,
    *,
    admit: Callable[[str | None], str],
    models: list[str],
    sessions: Sessions,
    make_session: Callable[[str, Outbox], RealtimeSession],
    max_sessions: int,
    max_session_s: float,
    max_pending_bytes: int,
    send_timeout_s: float,
) -> None:
    try:
        admit(authorization(ws))
    except ServiceError as err:
        await ws.close(code=POLICY, reason=err.message[:120])
        return
    model = ws.query_params.get("model") or models[0]
    if model not in models:
        await ws.close(code=POLICY, reason=f"unknown model; this server serves {', '.join(models)}"[:120])
        return
    protos = _subprotocols(ws)
    await ws.accept(subprotocol="realtime" if "realtime" in protos else None)
    if sessions.open >= max_sessions:
        await ws.close(code=TRY_AGAIN, reason="too many realtime sessions; retry shortly")
        return
    code, reason = NORMAL, ""
    session: RealtimeSession | None = None
    tasks: list[asyncio.Task] = []
    sessions.open += 1
    try:
        outbox = Outbox(max_pending_bytes)
        session = make_session(model, outbox)
        session.created()
        writer = asyncio.create_task(_write(ws, outbox, send_timeout_s))
        reader = asyncio.create_task(_read(ws, session))
        behind = asyncio.create_task(outbox.overflow.wait())
        tasks = [writer, reader, behind]
        done, _ = await asyncio.wait(tasks, timeout=max_session_s, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            reason = "session time limit reached"
        elif behind in done or (writer in done and writer.exception() is None and writer.result()):
            code, reason = POLICY, "client is not reading its events"
        elif reader in done and reader.exception() is None and reader.result():
            code, reason = reader.result()
        elif any(t.exception() is not None and not isinstance(t.exception(), WebSocketDisconnect) for t in done):
            failed = next(t for t in done if t.exception() is not None)
            log.error("realtime session failed", exc_info=failed.exception())
            code, reason = INTERNAL, "internal error"
    except Exception:
        log.exception("realtime session failed")
        code, reason = INTERNAL, "internal error"
    finally:
        for task in tasks:
            task.cancel()
        try:
            if session is not None:
                await session.close()
        except Exception:
            log.exception("realtime session failed to close")
            code, reason = INTERNAL, "internal error"
        finally:
            sessions.open -= 1  # freed before the close frame, whatever ended the socket
    # The close frame queues behind what the client has not read: it gets one send's time too.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(send_timeout_s):
            await ws.close(code=code, reason=reason)


async def _read(ws: WebSocket, session: RealtimeSession) -> tuple[int, str] | None:
    """Client events until the client closes (None) or sends one too big ((1009, reason))."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        if len(data) > MAX_EVENT_BYTES:
            return TOO_BIG, "event over 16 MiB"
        await session.handle(data)
        # Let the writer hand on what this event queued before the next is handled: events the
        # proxy delivers in one batch are otherwise all handled without a pause, and their output
        # counted as "not read" (a reading client was closed with 1008 for a burst of its own).
        await asyncio.sleep(0)


async def _write(ws: WebSocket, outbox: Outbox, send_timeout_s: float) -> bool:
    """Send events in order; True when the client fell too far behind (the socket is to close):
    over `max_pending_bytes` queued, or a send the connection did not take within `send_timeout_s`
    (a client that does not read, once the socket buffers between us are full)."""
    while True:
        if outbox.overflowed:
            return True
        _event, text = await outbox.get()
        if outbox.overflowed:
            return True
        try:
            async with asyncio.timeout(send_timeout_s):
                await ws.send_text(text)
        except TimeoutError:
            return True
