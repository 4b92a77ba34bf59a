"""The one place that maps errors to HTTP statuses and OpenAI error bodies."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from ray.serve.exceptions import BackPressureError
from starlette.requests import ClientDisconnect

from modalities.errors import InputError
from serve.admission.limits import OVERLOAD_RETRY_AFTER_S
from serve.errors import (
    ClientGone,
    DeadlineExceeded,
    Internal,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServiceError,
    Unauthenticated,
    from_input_error,
)

STATUS: dict[type[ServiceError], int] = {
    InvalidRequest: 400,
    Unauthenticated: 401,
    NotFound: 404,
    MethodNotAllowed: 405,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    RateLimited: 429,
    ClientGone: 499,  # nginx's "client closed request": nobody reads it, and it stays out of the 5xx count
    Internal: 500,
    Overloaded: 503,
    DeadlineExceeded: 504,
}


def status_of(err: ServiceError) -> int:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def as_service_error(exc: BaseException, media_param: str | None = None) -> ServiceError | None:
    """`exc` as the `ServiceError` it stands for; None for an unexpected failure (our fault)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InputError):
        # Media errors name the form field when the route has one (transcriptions: `file`).
        return from_input_error(exc, param=media_param)
    if isinstance(exc, ClientDisconnect):
        return ClientGone("the client closed the connection", code="client_closed_request")
    if isinstance(exc, BackPressureError):
        # A deployment's queue is full: say so at once rather than queue without bound.
        return Overloaded(
            "the service is overloaded; retry shortly", code="overloaded", retry_after=str(OVERLOAD_RETRY_AFTER_S)
        )
    return None


class ErrorJSONResponse(JSONResponse):
    """An error body, always encodable: ASCII-escaped JSON, so no client string quoted in a
    message (a lone surrogate, say) can make the error itself fail to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(err: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if err.retry_after:
        headers["Retry-After"] = err.retry_after
    return ErrorJSONResponse(err.body(), status_code=status_of(err), headers=headers or None)
