"""From a request body's bytes to a validated protocol model, or an `InvalidRequest` naming the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from serve.errors import InvalidRequest

Model = TypeVar("Model", bound=BaseModel)
MAX_MESSAGE_CHARS = 300


def parse_json_body(raw: bytes, model: type[Model]) -> Model:
    """`raw` as a JSON object validated into `model`."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json") from err
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise validation_error(err.errors()) from err


def validation_error(errors: list[dict[str, Any]]) -> InvalidRequest:
    """Pydantic's validation errors as one refusal naming the first offending field."""
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    # Drop discriminator/type tags pydantic inserts into union locations (e.g. 'function-after').
    param = ".".join(part for part in loc if not part.startswith("function-")) or None
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json")
    if first.get("type") == "extra_forbidden":
        msg = "unsupported parameter"
    message = f"{param}: {msg}" if param else msg
    return InvalidRequest(message[:MAX_MESSAGE_CHARS], param=param, code="invalid_value")
