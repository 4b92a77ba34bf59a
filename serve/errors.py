"""Errors as OpenAI answers them: `{"error": {"message", "type", "param", "code"}}`.

Runtimes raise `MediaError` for the client's mistakes; this module is the one place that maps
exceptions to HTTP status codes. Messages are short and never echo request bodies.
"""

from __future__ import annotations

from typing import Any

from modalities.errors import MediaError

from .protocol import ErrorDetail, ErrorResponse

INVALID_REQUEST = "invalid_request_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error with its HTTP status and OpenAI error body fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()


def from_media_error(err: MediaError, param: str | None = None) -> APIError:
    """400 for a runtime's `MediaError`; `param` (the request field the media came in) wins over the
    runtime's own name for it."""
    return APIError(400, err.message, param=param or err.param, code=err.code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model '{model[:100]}' does not exist or you do not have access to it.",
        type=INVALID_REQUEST,
        param="model",
        code="model_not_found",
    )


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first offending field."""
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    # Drop discriminator/type tags pydantic inserts into union locations (e.g. 'text', 'function-after').
    param = ".".join(part for part in loc if not part.startswith("function-")) or None
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request.", code="invalid_json")
    if first.get("type") == "extra_forbidden":
        msg = "unsupported parameter"
    message = f"{param}: {msg}" if param else msg
    return APIError(400, message[:300], param=param, code="invalid_value")
