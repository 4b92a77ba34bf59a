"""Clients of `/v1/realtime` that misbehave over time, against the live app: a client that leaves
mid-response (its session freed within 1 s, the decoder slot freed, chat still answers), a client
that never reads (with server VAD on), one that reads only after the server has sent it more than
`realtime.max_pending_bytes` (not closed: Ray's Python proxy holds what it has not read; the 1008 for a
client that does not read where the connection pushes back is tests/unit/test_realtime_socket.py's),
`response.create` twice, a commit of an empty buffer.

Nothing here times the server except the documented 1 s free-up, polled with a deadline. The shared
socket and checks are in realtime_helpers.py.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from .realtime_helpers import (
    BYTES_PER_MS,
    CHEAP_SESSION,
    HELLO_ITEM,
    Socket,
    assert_decoder_idle,
    assert_freed_within_1s,
    b64,
    chat_still_answers,
    check_error,
    errors_in,
    message,
    pcm_sample,
    text,
)


def _leave(ws: Socket, how: str) -> None:
    if how == "abrupt":  # no close frame: the TCP connection just goes
        ws.ws.socket.shutdown(socket.SHUT_RDWR)
        ws.ws.socket.close()
    else:
        ws.ws.close()


@pytest.mark.parametrize(
    "modality,turn,how",
    [
        ("text", "text", "close"),
        ("audio", "text", "close"),
        ("text", "text", "abrupt"),
        ("audio", "audio", "close"),  # leaves while Whisper reads the turn
    ],
)
def test_a_client_that_leaves_mid_response_frees_everything(serve_url, modality, turn, how):
    """An item and `response.create`, then the client is gone at once: the session is freed within
    1 s, no decoder slot stays taken (the default response length is the whole context), and chat
    still answers."""
    ws = Socket(serve_url, setup={"output_modalities": [modality], "turn_detection": None})
    if turn == "text":
        ws.send({"type": "conversation.item.create", "item": message("user", text("Tell me a very long story about a cat."))})
    else:
        ws.send({"type": "input_audio_buffer.append", "audio": b64(pcm_sample())})
        ws.send({"type": "input_audio_buffer.commit"})
    ws.send({"type": "response.create"})
    _leave(ws, how)
    assert_freed_within_1s(serve_url, time.monotonic())
    assert_decoder_idle(serve_url)
    chat_still_answers(serve_url)


def test_a_client_that_leaves_after_the_first_delta(serve_url):
    """Mid-stream for sure: the client reads until the first text delta, then leaves."""
    ws = Socket(serve_url, setup={"output_modalities": ["text"], "turn_detection": None})
    ws.send({"type": "conversation.item.create", "item": message("user", text("Tell me a very long story about a cat."))})
    ws.send({"type": "response.create"})
    ws.until("response.output_text.delta")
    ws.ws.close()
    assert_freed_within_1s(serve_url, time.monotonic())
    assert_decoder_idle(serve_url)
    chat_still_answers(serve_url)


def test_a_client_that_sends_silence_and_never_reads(serve_url):
    """200 appends of 100 ms of silence with server VAD on, nothing read (the client's queue holds
    one frame): the server neither dies nor closes the socket for it; afterwards the socket still
    answers, and once closed a new one works."""
    silence = b64(b"\0" * 100 * BYTES_PER_MS)
    ws = Socket(serve_url, setup={"output_modalities": ["text"], "turn_detection": {"type": "server_vad"}}, max_queue=1)
    for _ in range(200):
        ws.send({"type": "input_audio_buffer.append", "audio": silence})
    assert httpx.get(f"{serve_url}/health", timeout=30).status_code == 200
    said = ws.mark()  # reads what queued meanwhile
    assert not errors_in(said), errors_in(said)
    assert "input_audio_buffer.speech_started" not in [e["type"] for e in said]
    ws.send({"type": "input_audio_buffer.commit"})  # what VAD kept of the silence (the padding) commits
    assert ws.until("input_audio_buffer.committed")
    ws.ws.close()
    assert_freed_within_1s(serve_url, time.monotonic())
    with Socket(serve_url) as fresh:
        assert not errors_in(fresh.mark())
    chat_still_answers(serve_url)


def test_a_client_that_reads_only_after_a_burst_gets_every_event(serve_url):
    """200 events sent before any is read, each making the server queue ~100 KB (a `session.updated`
    echoing long instructions: 20 MB, past `realtime.max_pending_bytes`). The suite's ingress, Ray's
    Python proxy, takes every event the replica sends and holds what the client has not read: the
    replica's sends never wait, so nothing is pending there and the client is not closed — nor for the
    burst the replica took from the proxy at once (a 1008 before the writer ran between client
    events, even for a client that read). Read at last: every echo, in order, no error; closed, the
    session is freed within 1 s."""
    long = "x" * 99_000
    with Socket(serve_url, max_queue=1) as ws:
        ws.send({"type": "session.update", "session": {"instructions": long}})
        for _ in range(199):
            ws.send({"type": "session.update", "session": {}})  # echoes the long instructions
        said = ws.mark()
        assert not errors_in(said), errors_in(said)[:3]
        echoes = [e["session"]["instructions"] for e in said if e["type"] == "session.updated"]
        assert len(echoes) == 200 and set(echoes) == {long}, (len(echoes), [e["type"] for e in said][-5:])
    assert_freed_within_1s(serve_url, time.monotonic())
    chat_still_answers(serve_url)


def test_a_client_that_floods_bad_events_unread_gets_every_error(serve_url):
    """300 refused events (20 KB each, a lone surrogate in them) sent without reading: the errors are
    small (the queue bound is far), so the socket stays open and, read at last, holds one error per
    event, in order, each naming its event."""
    ws = Socket(serve_url, max_queue=1)
    for i in range(300):
        ws.send({"type": "session.update", "event_id": f"flood_{i}", "session": {"instructions": "\ud800", "note": "x" * 20_000}})
    errors = errors_in(ws.mark())
    assert [e["event_id"] for e in errors] == [f"flood_{i}" for i in range(300)], [e["event_id"] for e in errors][:5]
    assert {(e["code"], e["param"]) for e in errors} == {("invalid_unicode", "session.instructions")}, errors[:3]
    ws.ws.close()
    assert_freed_within_1s(serve_url, time.monotonic())
    chat_still_answers(serve_url)


def test_response_create_twice(serve_url):
    with Socket(serve_url, setup={**CHEAP_SESSION, "max_output_tokens": 24}) as ws:
        ws.send(HELLO_ITEM)
        ws.send({"type": "response.create", "event_id": "first"})
        ws.send({"type": "response.create", "event_id": "second"})
        events = ws.until("response.done")
        errors = errors_in(events)
        assert [e["code"] for e in errors] == ["conversation_already_has_active_response"], errors
        assert errors[0]["event_id"] == "second"
        check_error(errors[0])
        assert [e["type"] for e in events].count("response.created") == 1
        ws.send({"type": "response.create", "event_id": "third"})  # the first is done: a new one starts
        again = ws.until("response.done")
        assert not errors_in(again) and again[-1]["response"]["status"] in ("completed", "incomplete"), again[-1]


def test_a_response_takes_its_own_max_output_tokens(serve_url):
    """`response.create`'s max_output_tokens (1..4096) bounds that response only; out of range it is
    refused by name (`response.max_output_tokens`) and no response starts."""
    with Socket(serve_url, setup={**CHEAP_SESSION, "max_output_tokens": 24}) as ws:
        ws.send(HELLO_ITEM)
        ws.send({"type": "response.create", "event_id": "r0", "response": {"max_output_tokens": 4097}})
        said = ws.mark()
        assert [(e["code"], e["param"], e["event_id"]) for e in errors_in(said)] == [("invalid_value", "response.max_output_tokens", "r0")], said
        assert "response.created" not in [e["type"] for e in said]
        ws.send({"type": "response.create", "event_id": "r1", "response": {"max_output_tokens": 1}})
        done = ws.until("response.done")[-1]["response"]
        assert done["usage"]["output_tokens"] <= 1, done["usage"]
        ws.mark()
        assert ws.session["max_output_tokens"] == 24, ws.session  # the session's own is unchanged


@pytest.mark.parametrize("vad", [None, {"type": "server_vad"}], ids=["push-to-talk", "server-vad"])
def test_commit_of_an_empty_buffer(serve_url, vad):
    with Socket(serve_url, setup={**CHEAP_SESSION, "turn_detection": vad}) as ws:
        ws.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
        ws.send({"type": "input_audio_buffer.append", "audio": b64(b"\0" * 40 * BYTES_PER_MS)})
        ws.send({"type": "input_audio_buffer.commit", "event_id": "c2"})
        said = ws.mark()
    errors = errors_in(said)
    expected = [("input_audio_buffer_commit_empty", "c1"), ("input_audio_buffer_commit_empty", "c2")]
    assert [(e["code"], e["event_id"]) for e in errors] == expected, errors
    assert "input_audio_buffer.committed" not in [e["type"] for e in said]
