"""The `/v1/realtime` socket loop (serve/http/realtime.py) around a real session, without Ray.

Over a real connection (uvicorn on loopback, small socket buffers on both ends, no compression) a
client that never reads fills what the connection buffers within a few hundred KB, so the server's
sends wait, deterministically: it is closed with 1008 when more than `max_pending_bytes` queue up,
or when one send is not taken within `send_timeout_s`, and its session is freed either way.

Over a connection that never pushes back (as Ray's Python proxy, which takes every event the replica
sends), a burst of client events handled at once is not mistaken for a client that does not read;
and however the socket ends, the session is no longer counted.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
import websockets.sync.client as ws_client
from fastapi import FastAPI, WebSocket
from websockets.exceptions import ConnectionClosed

from serve.config import ChorusConfig
from serve.http import realtime
from serve.services.realtime import RealtimeSession
from serve.services.realtime_outbox import Outbox

SOCKET_BUFFER = 16 * 1024  # SO_SNDBUF of the server's sockets, SO_RCVBUF of the client's
# Long instructions, then tiny updates that each echo them (~100 KB out for ~40 bytes in: what the
# client sends after the server stopped reading it fits any socket buffer)
LONG = json.dumps({"type": "session.update", "session": {"instructions": "x" * 99_000}})
ECHO = json.dumps({"type": "session.update", "session": {}})
EVENTS = 40  # ~4 MB of echoes: far past everything the connection buffers (a few hundred KB)
FREED_WITHIN_S = 30.0  # a bound that only catches a hang: the limits trip within a send timeout


def make_session(model: str, outbox: Outbox) -> RealtimeSession:
    """A text-only session (no speech, no VAD, no chat): `session.update` is all these tests send."""
    return RealtimeSession(
        config=ChorusConfig(), model=model, outbox=outbox, chat=None,
        speech=SimpleNamespace(enabled=False), transcribe=None, vad_factory=None,
    )


def serve_kwargs(sessions: realtime.Sessions, **limits: Any) -> dict[str, Any]:
    return {
        "admit": lambda authorization: "tenant", "models": ["chorus"], "sessions": sessions,
        "make_session": make_session, "max_sessions": 4, "max_session_s": 600.0, **limits,
    }


class Server:
    """`serve_session` behind uvicorn on a loopback port, in a thread of its own."""

    def __init__(self, **limits: Any) -> None:
        self.sessions = realtime.Sessions()
        app = FastAPI()

        @app.websocket("/v1/realtime")
        async def socket_route(ws: WebSocket) -> None:
            await realtime.serve_session(ws, **serve_kwargs(self.sessions, **limits))

        self.listener = socket.socket()
        # Accepted sockets inherit it: the server's side of each connection buffers little.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_level="warning", ws_ping_interval=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.listener])))
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)

    def connect(self) -> Any:
        """A client with a small receive buffer that reads nothing until told (its library queues
        one frame), without compression: the echoes must take their size on the wire."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.connect(("127.0.0.1", self.port))
        return ws_client.connect(f"ws://127.0.0.1:{self.port}/v1/realtime", sock=sock, max_queue=1, compression=None, max_size=2**25)

    def wait_freed(self) -> float:
        """Polls the session count (the registry `/health` reports) until it is 0; the time then."""
        deadline = time.monotonic() + FREED_WITHIN_S
        while self.sessions.open:
            assert time.monotonic() < deadline, f"{self.sessions.open} session(s) still open after {FREED_WITHIN_S} s"
            time.sleep(0.005)
        return time.monotonic()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def server_with() -> Iterator[Any]:
    servers: list[Server] = []

    def start(**limits: Any) -> Server:
        servers.append(Server(**limits))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def read_to_the_close(ws: Any) -> tuple[list[str], int | None]:
    """Reads what was queued, then the close: the event types and the close code."""
    types = []
    try:
        while True:
            types.append(json.loads(ws.recv(timeout=30))["type"])
    except ConnectionClosed as closed:
        return types, closed.rcvd.code if closed.rcvd else None


@pytest.mark.parametrize(
    "limits",
    [
        # ~4 MB queue up against 1 MiB long before a send could time out
        {"max_pending_bytes": 2**20, "send_timeout_s": 60.0},
        # nothing near the queue bound: the send the connection does not take trips the deadline
        {"max_pending_bytes": 2**30, "send_timeout_s": 2.0},
    ],
    ids=["max_pending_bytes", "send_timeout_s"],
)
def test_a_client_that_never_reads_is_closed_with_1008_and_freed(server_with, limits):
    server = server_with(**limits)
    with server.connect() as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        sent = time.monotonic()
        try:
            ws.send(LONG)
            for _ in range(EVENTS - 1):
                ws.send(ECHO)
        except ConnectionClosed:
            # The server may close the connection (1008, the outcome under test) while the client is
            # still sending: whether its close frame comes before the last event is a race.
            pass
        freed = server.wait_freed()
        if limits["max_pending_bytes"] > EVENTS * len(LONG):  # only the deadline could close it
            assert freed - sent >= limits["send_timeout_s"]
        # Read at last: what the connection held, then the 1008 queued behind it (the close frame
        # waits up to one send timeout for the client to make room).
        types, code = read_to_the_close(ws)
    assert code == realtime.POLICY, (code, types[-3:])
    assert 0 < types.count("session.updated") < EVENTS, types.count("session.updated")
    with server.connect() as fresh:  # the replica takes new sessions
        assert json.loads(fresh.recv(timeout=30))["type"] == "session.created"


# --- a connection that never pushes back (Ray's Python proxy) -----------------------------------


class ProxiedSocket:
    """What Starlette's WebSocket offers `serve_session`, as behind Ray's Python proxy: client events
    arrive in batches (each taken without a pause), and every send completes at once."""

    def __init__(self, frames: list[str]) -> None:
        self.headers: dict[str, str] = {}
        self.query_params: dict[str, str] = {}
        self.incoming = deque({"type": "websocket.receive", "text": frame} for frame in frames)
        self.sent: list[dict[str, Any]] = []
        self.closed: int | None = None

    async def accept(self, subprotocol: str | None = None) -> None:
        pass

    async def receive(self) -> dict[str, Any]:
        if self.incoming:
            return self.incoming.popleft()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code


def test_a_burst_of_events_from_a_reading_client_is_not_taken_for_one_that_does_not_read():
    """200 events that each queue ~100 KB, taken from the proxy in one batch: 20 MB of output against
    the default 8 MiB bound, all of it taken by the connection as it comes, so no 1008 (one was sent
    to a reading client before the reader let the writer run between events)."""
    sessions = realtime.Sessions()
    ws = ProxiedSocket([LONG] + [ECHO] * 199)
    limits = {"max_pending_bytes": ChorusConfig().realtime.max_pending_bytes, "send_timeout_s": 10.0}
    asyncio.run(realtime.serve_session(ws, **serve_kwargs(sessions, **limits)))
    assert ws.closed == realtime.NORMAL
    assert [e["type"] for e in ws.sent].count("session.updated") == 200
    assert sessions.open == 0


class FailingSession:
    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in

    def created(self) -> None:
        if self.fail_in == "created":
            raise RuntimeError("created failed")

    async def handle(self, data: str) -> None:
        if self.fail_in == "handle":
            raise RuntimeError("handle failed")
        await asyncio.Event().wait()  # as a long response: the socket ends meanwhile

    async def close(self) -> None:
        if self.fail_in == "close":
            raise RuntimeError("close failed")


@pytest.mark.parametrize("fail_in", ["make_session", "created", "handle", "close", "cancelled"])
def test_the_session_is_freed_however_the_socket_ends(fail_in):
    """A fault while the session starts, runs or closes, or the handler cancelled (the replica
    stopping): the session is no longer counted."""
    sessions = realtime.Sessions()
    ws = ProxiedSocket([ECHO])

    def make(model: str, outbox: Outbox) -> FailingSession:
        if fail_in == "make_session":
            raise RuntimeError("make_session failed")
        return FailingSession(fail_in)

    async def run() -> None:
        kwargs = {**serve_kwargs(sessions, max_pending_bytes=2**20, send_timeout_s=10.0), "make_session": make}
        if fail_in == "close":
            kwargs["max_session_s"] = 0.05  # the session ends while `handle` still waits
        task = asyncio.create_task(realtime.serve_session(ws, **kwargs))
        if fail_in == "cancelled":
            while not sessions.open:
                await asyncio.sleep(0)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert sessions.open == 0
    if fail_in != "cancelled":
        assert ws.closed == realtime.INTERNAL
