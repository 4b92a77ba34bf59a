"""The ingress's admission limit and request deadline, on `respond` directly (no Ray needed)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect, Request

import serve.http.respond as ingress
from serve.admission import InFlight
from serve.admission.limits import OVERLOAD_RETRY_AFTER_S
from serve.config import LimitsConfig


async def _empty_body() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


def request() -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
    return Request(scope, _empty_body)


@pytest.fixture(autouse=True)
def clean_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress, "in_flight", InFlight())


def test_deadline_gives_504_with_openai_body() -> None:
    started = []

    async def slow() -> JSONResponse:
        started.append(True)
        await asyncio.sleep(5)
        return JSONResponse({})

    response = asyncio.run(ingress.respond(request(), "/r", slow(), None, limits=LimitsConfig(request_timeout_s=0.05)))
    assert response.status_code == 504 and started
    assert json.loads(response.body)["error"]["code"] == "timeout"
    assert ingress.in_flight.counts["/r"] == 0  # counted out again


def test_admission_limit_refuses_before_the_handler_runs() -> None:
    ran = []

    async def handler() -> JSONResponse:
        ran.append(True)
        return JSONResponse({"ok": True})

    limits = LimitsConfig(max_in_flight=2)
    ingress.in_flight.counts.update({"/a": 1, "/b": 1})  # two requests in flight, on any routes
    response = asyncio.run(ingress.respond(request(), "/a", handler(), None, limits=limits))
    assert response.status_code == 503 and not ran
    assert response.headers["retry-after"] == str(OVERLOAD_RETRY_AFTER_S)
    assert json.loads(response.body)["error"]["code"] == "overloaded"

    ingress.in_flight.counts["/b"] = 0  # one slot free again
    response = asyncio.run(ingress.respond(request(), "/a", handler(), None, limits=limits))
    assert response.status_code == 200 and ran


def test_an_abandoned_stream_cancels_its_generation() -> None:
    """A client that leaves mid-stream (the body iterator is closed or cancelled early) cancels the
    decoder call; one read to its end does not."""

    async def pieces():
        for i in range(5):
            yield f"{i}".encode()

    async def run(read: int | None) -> list[str]:
        calls: list[str] = []
        body = ingress.cancel_unless_read_to_end(pieces(), lambda: calls.append("cancel"))
        got = 0
        async for _ in body:
            got += 1
            if read is not None and got == read:
                break
        await body.aclose()
        return calls

    assert asyncio.run(run(read=2)) == ["cancel"]
    assert asyncio.run(run(read=None)) == []

    async def cancelled_mid_read() -> list[str]:
        calls: list[str] = []

        async def slow():
            yield b"first"
            await asyncio.sleep(10)
            yield b"never"

        async def consume():
            async for _ in ingress.cancel_unless_read_to_end(slow(), lambda: calls.append("cancel")):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return calls

    assert asyncio.run(cancelled_mid_read()) == ["cancel"]


def request_with(receive) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
    return Request(scope, receive)


def test_a_client_leaving_cancels_the_work_and_answers_499() -> None:
    """Behind HAProxy nothing else stops a non-streaming generation whose client has gone."""
    cancelled = []

    async def leaves_soon() -> dict:
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def generation() -> dict:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return {}

    async def handler() -> JSONResponse:
        return JSONResponse(await ingress.unless_client_leaves(request_with(leaves_soon), generation()))

    response = asyncio.run(ingress.respond(request(), "/r", handler(), None, limits=LimitsConfig()))
    assert response.status_code == 499 and cancelled
    assert json.loads(response.body)["error"]["code"] == "client_closed_request"


def test_work_that_finishes_first_is_answered_and_the_watch_stops() -> None:
    watching = []

    async def stays() -> dict:
        watching.append(True)
        await asyncio.sleep(5)
        return {"type": "http.disconnect"}

    async def work() -> str:
        await asyncio.sleep(0.01)
        return "done"

    async def main() -> tuple[str, int]:
        result = await ingress.unless_client_leaves(request_with(stays), work())
        await asyncio.sleep(0)
        return result, len([t for t in asyncio.all_tasks() if not t.done()])

    result, still_running = asyncio.run(main())
    assert result == "done" and watching and still_running == 1  # only main itself


def test_a_failing_watch_does_not_end_the_work() -> None:
    async def broken() -> dict:
        raise RuntimeError("receive failed")

    async def work() -> str:
        await asyncio.sleep(0.05)
        return "done"

    assert asyncio.run(ingress.unless_client_leaves(request_with(broken), work())) == "done"


def test_a_streams_access_line_is_written_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    """The access line of a stream waits for its end (a log record costs ~0.85 ms in a replica, which
    would stand between the first token and the client), and still reports the time to the first
    byte, not the stream's length; a plain response logs at once."""
    from fastapi.responses import StreamingResponse

    async def pieces():
        yield b"data: 1\n\n"
        await asyncio.sleep(0.3)
        yield b"data: [DONE]\n\n"

    async def handler() -> StreamingResponse:
        return StreamingResponse(pieces(), media_type="text/event-stream")

    async def run() -> list[str]:
        response = await ingress.respond(request(), "/s", handler(), None, limits=LimitsConfig())
        logged_before = [r.getMessage() for r in caplog.records if "/s 200" in r.getMessage()]
        assert ingress.in_flight.counts["/s"] == 1  # still in flight until the stream ends
        body = [piece async for piece in response.body_iterator]
        assert body[-1] == b"data: [DONE]\n\n" and ingress.in_flight.counts["/s"] == 0
        return logged_before

    with caplog.at_level("INFO", logger=ingress.log.name):
        logged_before = asyncio.run(run())
        lines = [r.getMessage() for r in caplog.records if "/s 200" in r.getMessage()]
    assert logged_before == [] and len(lines) == 1
    assert float(lines[0].split()[3].removesuffix("ms")) < 200  # time to the first byte, not the 300-ms stream

    caplog.clear()
    with caplog.at_level("INFO", logger=ingress.log.name):
        asyncio.run(ingress.respond(request(), "/p", _plain(), None, limits=LimitsConfig()))
    assert [r.getMessage() for r in caplog.records if "/p 200" in r.getMessage()]


async def _plain() -> JSONResponse:
    return JSONResponse({"ok": True})


def test_cancelled_handlers_give_their_slots_back_every_time() -> None:
    """A handler cancelled mid-work (Serve cancels it when the client disconnects) releases its slot:
    100 times over, then the count is zero and a request is admitted under a limit of 1."""

    async def stuck() -> JSONResponse:
        await asyncio.sleep(30)
        return JSONResponse({})

    async def main() -> None:
        for _ in range(100):
            task = asyncio.ensure_future(ingress.respond(request(), "/c", stuck(), None, limits=LimitsConfig()))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert ingress.in_flight.total() == 0
        ok = await ingress.respond(request(), "/c", _plain(), None, limits=LimitsConfig(max_in_flight=1))
        assert ok.status_code == 200

    asyncio.run(main())


def test_a_stalled_body_is_a_408_and_takes_no_slot() -> None:
    async def stalls() -> dict:
        await asyncio.sleep(30)
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/b", "headers": [], "query_string": b""}
    limits = LimitsConfig(body_idle_timeout_s=0.05)
    response = asyncio.run(ingress.respond(Request(scope, stalls), "/b", _plain(), None, limits=limits))
    assert response.status_code == 408 and json.loads(response.body)["error"]["code"] == "request_timeout"
    assert ingress.in_flight.total() == 0


def test_a_stream_whose_response_never_starts_still_gives_its_slot_back() -> None:
    """The ASGI call fails before the body is iterated (the client is gone): the slot comes back."""
    from fastapi.responses import StreamingResponse

    async def pieces():
        yield b"data: [DONE]\n\n"

    async def handler() -> StreamingResponse:
        return StreamingResponse(pieces(), media_type="text/event-stream")

    async def broken_send(_message: dict) -> None:
        raise OSError("client gone")

    async def main() -> None:
        response = await ingress.respond(request(), "/s", handler(), None, limits=LimitsConfig())
        assert ingress.in_flight.counts["/s"] == 1
        with pytest.raises((OSError, ClientDisconnect)):  # Starlette reports a failed send as a disconnect
            await response({"type": "http", "asgi": {"spec_version": "2.4"}}, _empty_body, broken_send)
        assert ingress.in_flight.counts["/s"] == 0

    asyncio.run(main())


def test_an_error_quoting_a_lone_surrogate_still_encodes() -> None:
    from serve.errors import model_not_found
    from serve.http.errors import error_response

    response = error_response(model_not_found("\ud800"))
    assert response.status_code == 404 and json.loads(response.body)["error"]["code"] == "model_not_found"
