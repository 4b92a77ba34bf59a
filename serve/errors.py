"""Domain errors: what the services raise when they refuse or cannot serve a request.

No HTTP here: each class says *what* went wrong, with OpenAI's error-body fields (`message`,
`type`, `param`, `code`); `serve/http/errors.py` is the one place that maps a class to a status.
Messages are short and never echo request bodies.
"""

from __future__ import annotations

from typing import Any

from modalities.errors import InputError
from serve.protocol.errors import ErrorDetail, ErrorResponse

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ServiceError(Exception):
    """A request the service refuses (the client's mistake) or cannot serve right now."""

    type = INVALID_REQUEST

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds, as the Retry-After header carries them

    def body(self) -> dict[str, Any]:
        """OpenAI's error body for this error."""
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()


class InvalidRequest(ServiceError):
    """The request is malformed or asks for something this deployment does not do."""


class Unauthenticated(ServiceError):
    """No API key, or one the deployment does not know."""


class RateLimited(ServiceError):
    """The key's request budget is spent for now."""

    type = "requests"


class RequestTimeout(ServiceError):
    """The client sent its request too slowly (a body that trickles or stalls)."""


class MethodNotAllowed(ServiceError):
    """The route exists, not for this method."""


class NotFound(ServiceError):
    """The model (or another named resource) does not exist here."""


class PayloadTooLarge(ServiceError):
    """The body is over the configured byte limit."""


class Overloaded(ServiceError):
    """Too much work in flight; retry shortly."""

    type = SERVER_ERROR


class DeadlineExceeded(ServiceError):
    """The request did not finish within its deadline."""

    type = SERVER_ERROR


class ClientGone(ServiceError):
    """The client closed its connection before the answer was ready."""


class Internal(ServiceError):
    """Our own fault; the message says no more than that."""

    type = SERVER_ERROR

    def __init__(self, message: str = "internal error", *, code: str | None = None) -> None:
        super().__init__(message, code=code)


def from_input_error(err: InputError, param: str | None = None) -> InvalidRequest:
    """A runtime's `InputError` (bad media, a prompt over the context) as a refused request; `param`
    (the request field the input came in) wins over the runtime's own name for it."""
    return InvalidRequest(err.message, param=param or err.param, code=err.code)


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model '{model[:100]}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
