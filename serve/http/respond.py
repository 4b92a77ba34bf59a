"""Around every route: an in-flight slot, the deadline, error mapping, metrics, one access line.

`respond` runs a route's handler and always gives its slot back: when the response is complete,
or, for a stream, when the stream ends (read to its end, abandoned or failed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from serve import metrics
from serve.admission import ANONYMOUS, InFlight, Slot
from serve.config import LimitsConfig
from serve.errors import ClientGone, DeadlineExceeded, Internal
from serve.redact import RedactingFilter

from .body import read_body
from .errors import as_service_error, error_response

# Under `ray.serve` so that Serve's replica log files (with replica and request ids) get the lines;
# everything this logger writes (access lines, tracebacks that may quote a prompt) is PII-redacted.
log = logging.getLogger("ray.serve.chorus.ingress")
log.addFilter(RedactingFilter())
log.setLevel(logging.INFO)

in_flight = InFlight()  # this replica's requests in flight, per route


class SlotStreamingResponse(StreamingResponse):
    """A stream that gives its in-flight slot back and writes its access line when it ends: read
    to its end, failed, abandoned, or never started (the ASGI call itself ends)."""

    def __init__(self, inner: StreamingResponse, on_end: Callable[[], None]) -> None:
        super().__init__(_ended(inner.body_iterator, on_end), status_code=inner.status_code, headers=dict(inner.headers))
        self.on_end = on_end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_end()


async def _ended(body: AsyncIterator[bytes], on_end: Callable[[], None]) -> AsyncIterator[bytes]:
    try:
        async for piece in body:
            yield piece
    finally:
        on_end()


def request_id(request: Request) -> str:
    """Serve's id for this request (its proxy sets `x-request-id` and returns it in the response)."""
    return request.headers.get("x-request-id", "-")


async def _run(request: Request, handler: Awaitable[Response], timeout_s: float | None, media_param: str | None, route: str) -> Response:
    """The handler's response, or the error response its failure maps to."""
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: it can swallow a cancellation (3.11)
            return await handler
    except TimeoutError:
        return error_response(DeadlineExceeded(f"the request did not complete within {timeout_s:g} s", code="timeout"))
    except Exception as exc:
        err = as_service_error(exc, media_param)
        if err is None:
            rid = request_id(request)
            log.exception("%s failed request_id=%s", route, rid)
            err = Internal(f"internal error (request id {rid})")
        return error_response(err)


async def _admitted(request: Request, admit: Callable[[], None] | None, limits: LimitsConfig | None) -> None:
    """Before a slot is taken: the key (401/429), then the whole body (413/408), into
    `request.state.body`, so a slow client holds a connection, never a slot."""
    if admit is not None:
        admit()
    if limits is not None:
        request.state.body = await read_body(request, limits)


async def respond(
    request: Request,
    route: str,
    handler: Awaitable[Response],
    media_param: str | None,
    limits: LimitsConfig | None = None,
    admit: Callable[[], None] | None = None,
    audit: Audit | None = None,
) -> Response:
    """Admit the request, read its body (with `limits`), take an in-flight slot, run the handler;
    map every failure to OpenAI's error body, count and log the outcome, give the slot back.

    With `limits`: a replica already working on `max_in_flight` requests answers 503 at once; a
    response not started within `request_timeout_s` is a 504. `audit(request, status, latency_ms)`
    is awaited once the outcome is known: before a JSON answer leaves, at the end of a stream's body.
    """
    started = request.state.started = time.perf_counter()
    timeout_s = limits.request_timeout_s if limits is not None else None
    try:
        await _admitted(request, admit, limits)
        slot = in_flight.acquire(route, limits.max_in_flight if limits is not None else None)
    except BaseException as exc:  # refused (or the client left) before the handler runs
        handler.close()  # type: ignore[attr-defined]  # the coroutine never runs
        err = as_service_error(exc, media_param) if isinstance(exc, Exception) else None
        if err is None:
            raise
        return await _audited(audit, request, _account(request, route, error_response(err), started, None), started)
    request.state.deadline = None if timeout_s is None else time.monotonic() + timeout_s
    response: Response | None = None
    try:
        response = await _run(request, handler, timeout_s, media_param, route)
    finally:  # cancelled (the client left) or done: a stream gives its slot back when it ends
        if not isinstance(response, StreamingResponse):
            slot.release()
    return await _audited(audit, request, _account(request, route, response, started, slot), started)


Audit = Callable[[Request, int, float], Awaitable[None]]


async def _audited(audit: Audit | None, request: Request, response: Response, started: float) -> Response:
    """`response`, its audit row written (a JSON answer) or to be written when its body ends (a stream)."""
    if audit is None:
        return response
    if isinstance(response, StreamingResponse):
        response.body_iterator = _then(response.body_iterator, lambda: audit(request, response.status_code, _ms(started)))
        return response
    await audit(request, response.status_code, _ms(started))
    return response


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def _then(body: AsyncIterator[bytes], after: Callable[[], Awaitable[None]]) -> AsyncIterator[bytes]:
    """`body`, then `after()` once it has been read to its end (an abandoned stream is audited too)."""
    try:
        async for piece in body:
            yield piece
    finally:
        await asyncio.shield(after())


def _account(request: Request, route: str, response: Response, started: float, slot: Slot | None) -> Response:
    tags = {"route": route, "status": str(response.status_code)}
    metrics.REQUESTS.inc(tags=tags)
    if response.status_code >= 400:
        metrics.ERRORS.inc(tags=tags)
    # One access line per request: never bodies, media or text (streams: latency to the first byte).
    # A stream's line is written when it ends: a log record costs ~0.85 ms in a replica, which
    # would otherwise stand between the first token and the client.
    line = (
        "%s %s %d %.1fms key=%s request_id=%s",
        request.method,
        route,
        response.status_code,
        (time.perf_counter() - started) * 1000,
        getattr(request.state, "key_id", ANONYMOUS),
        request_id(request),
    )
    if not (isinstance(response, StreamingResponse) and slot is not None):
        log.info(*line)
        return response
    logged = []

    def on_end() -> None:  # runs once or more (the body's end, then the ASGI call's): acts once
        slot.release()
        if not logged:
            logged.append(True)
            log.info(*line)

    return SlotStreamingResponse(response, on_end)


async def unless_client_leaves(request: Request, work: Awaitable[Any]) -> Any:
    """`await work`, unless the client disconnects first: then `work` is cancelled and
    `ClientGone` raised. Behind Serve's Python proxy a disconnect also cancels this handler;
    behind HAProxy (direct ingress) nothing else notices it, and a non-streaming generation would run
    to its end for nobody. Streaming responses get the same watch from Starlette."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and watch.exception() is not None:  # the watch itself failed: just wait
            await asyncio.wait({task})
        if task.done():
            return task.result()
        raise ClientGone("the client closed the connection", code="client_closed_request")
    finally:
        for pending in (task, watch):
            if not pending.done():
                pending.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body has been read, so `receive` waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_unless_read_to_end(body: AsyncIterator[bytes], cancel: Callable[[], None]) -> AsyncIterator[bytes]:
    """`body`, calling `cancel` if it is abandoned before its end (the client went away mid-stream):
    the decoder then drops the sequence at once. Serve also carries a cancelled request over to the
    calls it made, but a fast decoder loses that race now and then (a stream kept generating after
    its client left, seen once in 20 disconnects); cancelling twice is harmless."""
    finished = False
    try:
        async for piece in body:
            yield piece
        finished = True
    finally:
        if not finished:
            cancel()


def server_timing(started: float, decoder_called: float, first_event: Any) -> str | None:
    """`Server-Timing` for a stream's response: where its time to first token went. `ingress` is
    this replica's share (request in → first token out), `prep` its own work before it calls the
    decoder (the body, validation, encoders), `decoder` the decoder replica's (request in → first
    token: the prompt, a slot, prefill). What a client measures beyond `ingress` is the HTTP
    proxy's hops; `ingress` − `prep` − `decoder` is the round trip between the replicas."""
    decoder_s = getattr(first_event, "first_token_s", None)
    if decoder_s is None:
        return None
    ingress_s = time.perf_counter() - started
    return (
        f'ingress;dur={ingress_s * 1000:.1f};desc="ingress: request to first token", '
        f'prep;dur={(decoder_called - started) * 1000:.1f};desc="ingress: request to decoder call", '
        f'decoder;dur={decoder_s * 1000:.1f};desc="decoder: request to first token"'
    )
