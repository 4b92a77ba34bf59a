"""Shared by the hostile `/v1/realtime` tests (test_realtime_fuzz_*.py): a JSON-event socket to
the live app, the checks every module makes (the error event's shape, the session freed within 1 s
of a close, no decoder slot left taken) and the builders of client events.

The contract (serve/http/realtime.py): every bad client event gets one `error` event (with a code,
naming the client event by its `event_id`) and the session goes on; the only closes are the
documented ones (1000; 1008 a client that does not read; 1009 an event over 16 MiB; 1013 too many
sessions), never 1011; a closed socket's session is freed within 1 s (`/health`'s
`ingress.realtime_sessions`) and leaves no decoder slot behind.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
import soxr
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed

from .conftest import AUTH

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "audio" / "where_is_my_order.wav"
DOCUMENTED_CLOSES = {1000, 1008, 1009, 1013}
PCM_RATE = 24_000
BYTES_PER_MS = PCM_RATE * 2 // 1000  # 48
MAX_BUFFER_S = 120.0  # realtime.max_buffer_s (the default: conftest does not set it)
MAX_INSTRUCTIONS = 100_000
MAX_RESPONSE_TOKENS = 4096  # a session's max_output_tokens: 1 to this, or "inf"
MAX_JSON_DEPTH = 32  # serve/protocol/parse.py: deeper client events are refused (invalid_json)
RECV_TIMEOUT_S = 120.0
MAX_TOKENS = 3  # what a response of these tests may write
ERROR_KEYS = {"type", "code", "message", "param", "event_id"}

# Setup of every socket here: text answers of a few tokens, push-to-talk (no server VAD).
CHEAP_SESSION = {"output_modalities": ["text"], "turn_detection": None, "max_output_tokens": MAX_TOKENS}


def ws_url(serve_url: str, model: str = "chorus") -> str:
    return serve_url.replace("http://", "ws://") + f"/v1/realtime?model={model}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pcm_sample() -> bytes:
    audio, rate = sf.read(SAMPLE, dtype="float32")
    return (np.clip(soxr.resample(audio, rate, PCM_RATE), -1, 1) * 32767).astype("<i2").tobytes()


class Closed(AssertionError):
    """The server closed the socket where the test did not expect it."""


class Socket:
    """One realtime socket, JSON events in and out."""

    def __init__(self, serve_url: str, *, setup: dict[str, Any] | None = CHEAP_SESSION, **options: Any) -> None:
        options.setdefault("max_size", 2**25)
        self.ws = ws_client.connect(ws_url(serve_url), additional_headers=AUTH, open_timeout=60, **options)
        self.marks = 0
        created = self.recv()
        assert created["type"] == "session.created", created
        self.session = created["session"]
        if setup is not None:
            self.send({"type": "session.update", "session": setup})
            updated = self.recv()
            assert updated["type"] == "session.updated", updated
            self.session = updated["session"]

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ws.close()

    def send(self, frame: str | bytes | dict[str, Any]) -> None:
        self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        try:
            return json.loads(self.ws.recv(timeout=timeout))
        except ConnectionClosed as err:
            raise Closed(f"the server closed the socket: {err.rcvd}") from err

    def until(self, kind: str, timeout: float = RECV_TIMEOUT_S) -> list[dict[str, Any]]:
        """Events up to the first of type `kind` (inclusive)."""
        events = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} in {timeout} s: {[e['type'] for e in events][-40:]}")
            events.append(self.recv(left))
            if events[-1]["type"] == kind:
                return events

    def until_done(self, timeout: float = RECV_TIMEOUT_S) -> list[dict[str, Any]]:
        """Events up to the `response.done` of the next response created (an earlier, cancelled
        one may still be finishing)."""
        events = self.until("response.created", timeout)
        response_id = events[-1]["response"]["id"]
        while not (events[-1]["type"] == "response.done" and events[-1]["response"]["id"] == response_id):
            events += self.until("response.done", timeout)
        return events

    def mark(self) -> list[dict[str, Any]]:
        """A `session.update` that must work, as a marker: the events the server sent before its
        `session.updated` (everything caused by what was sent before it: events are handled and
        answered in order). The session it reports is kept in `self.session`."""
        self.marks += 1
        marker = f"marker {self.marks}"
        self.send({"type": "session.update", "event_id": f"mark_{self.marks}", "session": {"instructions": marker}})
        events = []
        deadline = time.monotonic() + RECV_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no session.updated for {marker}: {[e['type'] for e in events][-40:]}"
            event = self.recv(left)
            if event["type"] == "session.updated" and event["session"]["instructions"] == marker:
                self.session = event["session"]
                return events
            assert not (event["type"] == "error" and event["error"].get("event_id") == f"mark_{self.marks}"), event
            events.append(event)


def errors_in(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["error"] for e in events if e["type"] == "error"]


def check_error(error: dict[str, Any]) -> None:
    """An `error` event's error: OpenAI's shape (type, code, message, param, event_id: a refused
    client event's errors and a failed response's alike), small (never echoing the input)."""
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["type"], str) and error["type"], error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["event_id"] is None or isinstance(error["event_id"], str), error
    assert len(json.dumps(error)) < 2000, f"the error echoes the input: {json.dumps(error)[:300]}…"


def sessions_open(serve_url: str) -> int:
    return httpx.get(f"{serve_url}/health", timeout=30).json()["ingress"]["realtime_sessions"]


def assert_freed_within_1s(serve_url: str, closed_at: float) -> None:
    """`/health` reports no open realtime session by a request started within 1 s of the close."""
    while True:
        started = time.monotonic()
        count = sessions_open(serve_url)
        if count == 0:
            return
        assert started - closed_at <= 1.0, f"{count} realtime session(s) still open 1 s after the socket closed"
        time.sleep(0.02)


def assert_decoder_idle(serve_url: str, timeout_s: float = 60.0) -> None:
    """No decode slot stays taken. A response nobody reads would run to its token limit (the
    session's default is the whole context: minutes here), so the deadline is generous: it tells a
    cancelled generation from a stuck one, not how fast the cancel is."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = httpx.get(f"{serve_url}/health", timeout=30).json()["deployments"]["llm_decoder"]["engine_stats"]
        if stats["active"] == 0:
            return
        assert time.monotonic() < deadline, f"decoder slots still taken {timeout_s} s after the client left: {stats}"
        time.sleep(0.2)


def chat_still_answers(serve_url: str) -> None:
    body = {"model": "chorus", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    resp = httpx.post(f"{serve_url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text[:300]


# --- client events ------------------------------------------------------------------------------


def ev(kind: Any, **fields: Any) -> dict[str, Any]:
    """An event named `evt_bad` (the error it gets must name it)."""
    return {"type": kind, "event_id": "evt_bad", **fields}


def update(**session: Any) -> dict[str, Any]:
    return ev("session.update", session=session)


def append(audio: Any) -> dict[str, Any]:
    return ev("input_audio_buffer.append", audio=audio)


def item(raw: Any, **extra: Any) -> dict[str, Any]:
    return ev("conversation.item.create", item=raw, **extra)


def message(role: Any, *parts: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": list(parts), **extra}


def text(value: Any, kind: str = "input_text") -> dict[str, Any]:
    return {"type": kind, "text": value}


def audio_part(value: Any) -> dict[str, Any]:
    return {"type": "input_audio", "audio": value}


def tools(*defs: Any) -> dict[str, Any]:
    return update(tools=list(defs))


def deep(depth: int) -> dict[str, Any] | int:
    """{"a": {"a": … 1}}, `depth` objects deep (json.dumps writes it without recursing past 1000)."""
    value: dict[str, Any] | int = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def deep_param(*path: str) -> str:
    """The param of a refusal of `deep` nesting under `path`: the path cut at MAX_JSON_DEPTH levels."""
    return ".".join([*path, *["a"] * (MAX_JSON_DEPTH - len(path))])


SECOND_OF_SILENCE = b64(b"\0" * PCM_RATE * 2)
HELLO_ITEM = {"type": "conversation.item.create", "item": message("user", text("hello"), id="item_known")}
