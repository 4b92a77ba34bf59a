"""Reading a request body: under the byte limit, and within its time limits.

A client that sends its body slowly holds a connection, never a slot: slots are taken once the
body is complete (`respond`). A body must arrive whole within `body_timeout_s`, with no gap
between chunks longer than `body_idle_timeout_s`, and, once that long has passed, at no less than
`min_body_bytes_per_s` on average; otherwise the request ends with a 408.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from serve.config import LimitsConfig
from serve.errors import PayloadTooLarge, RequestTimeout


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds {limit} bytes", code="request_too_large")


def _too_slow(why: str) -> RequestTimeout:
    return RequestTimeout(f"the request body arrived too slowly ({why})", code="request_timeout")


async def read_body(request: Request, limits: LimitsConfig) -> bytes:
    """The body, refused as soon as it is known to exceed `limits.max_body_bytes` (from
    Content-Length alone before any of it is read, else while it streams in), or to be too slow."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    started = time.monotonic()
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        elapsed = time.monotonic() - started
        left = limits.body_timeout_s - elapsed
        if left <= 0:
            raise _too_slow(f"not complete within {limits.body_timeout_s:g} s")
        if elapsed > limits.body_idle_timeout_s and size / elapsed < limits.min_body_bytes_per_s:
            raise _too_slow(f"under {limits.min_body_bytes_per_s} bytes/s")
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
            # arrives as the awaited piece completes, and Serve cancels a handler whose client left.
            async with asyncio.timeout(min(left, limits.body_idle_timeout_s)):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return b"".join(chunks)
        except TimeoutError:
            raise _too_slow(f"nothing for {limits.body_idle_timeout_s:g} s") from None
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
