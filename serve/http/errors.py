"""The one place that maps errors to HTTP statuses and OpenAI error bodies."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from ray.serve.exceptions import BackPressureError

from modalities.errors import InputError
from serve.admission.limits import OVERLOAD_RETRY_AFTER_S
from serve.errors import (
    ClientGone,
    DeadlineExceeded,
    Internal,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    Unauthenticated,
    from_input_error,
)

STATUS: dict[type[ServiceError], int] = {
    InvalidRequest: 400,
    Unauthenticated: 401,
    NotFound: 404,
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
    if isinstance(exc, BackPressureError):
        # A deployment's queue is full: say so at once rather than queue without bound.
        return Overloaded(
            "the service is overloaded; retry shortly", code="overloaded", retry_after=str(OVERLOAD_RETRY_AFTER_S)
        )
    return None


def error_response(err: ServiceError) -> JSONResponse:
    headers = {"Retry-After": err.retry_after} if err.retry_after else None
    return JSONResponse(err.body(), status_code=status_of(err), headers=headers)
