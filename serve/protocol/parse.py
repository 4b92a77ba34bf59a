"""The boundary for untrusted JSON: a request body's bytes → a validated protocol model.

In order, each with a 400 that names the field, never a 500: the bytes must parse as a JSON object
(integer literals beyond Python's 4,300-digit limit and nesting beyond the parser's recursion are
refused, not raised); the object may nest at most `MAX_JSON_DEPTH` levels; every string in it
(keys included) must be well-formed Unicode (JSON's `\\ud800` escapes can spell lone UTF-16
surrogates, which no tokenizer or encoder accepts); then the pydantic model validates it, and its
first error is told in words (OpenAI's phrasing: "Invalid type for 'messages.0.content': expected a
string or an array, but got an integer instead.").
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from serve.errors import InvalidRequest

from .common import CROSS_FIELD

Model = TypeVar("Model", bound=BaseModel)
MAX_MESSAGE_CHARS = 300
MAX_JSON_DEPTH = 32  # deepest legitimate request: messages → content parts → part → field
MAX_QUOTED_CHARS = 40
_SURROGATE = re.compile("[\ud800-\udfff]")

_EXPECTED = {
    "string_type": "a string",
    "list_type": "an array",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def parse_json_body(raw: bytes, model: type[Model]) -> Model:
    """`raw` as a JSON object validated into `model`."""
    body = _load(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    check_untrusted(body)
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise validation_error(err.errors(), body) from err


def _load(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError as err:
        raise InvalidRequest(
            f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).", code="invalid_json"
        ) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json") from err
    except ValueError as err:  # an integer literal over Python's digit limit
        raise InvalidRequest(
            "We could not parse the JSON body of your request: a number in it has too many digits.",
            code="invalid_json",
        ) from err


def check_untrusted(body: Any) -> None:
    """Depth and Unicode checks over a parsed JSON value, iteratively (no recursion to exhaust)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            raise InvalidRequest(
                f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).",
                param=_dotted(path[:MAX_JSON_DEPTH]),
                code="invalid_json",
            )
        if isinstance(value, str):
            _check_unicode(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_unicode(key, (*path, "<key>"))
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(value))


def _check_unicode(text: str, path: tuple[str, ...]) -> None:
    if _SURROGATE.search(text):
        raise InvalidRequest(
            f"Invalid value for '{_dotted(path)}': the string is not valid Unicode (it holds a lone UTF-16 "
            "surrogate escape).",
            param=_dotted(path) or None,
            code="invalid_unicode",
        )


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_safe(part) for part in path)


def _safe(text: str) -> str:
    """A client string fit to quote in a message: well-formed and short."""
    return _SURROGATE.sub("\ufffd", str(text))[:MAX_QUOTED_CHARS]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return "an array" if isinstance(value, list) else "an object"


def _locate(loc: tuple[Any, ...], body: Any, missing: bool) -> tuple[list[str], Any]:
    """The request field an error's `loc` points at, as the client wrote it: pydantic inserts
    union-member tags (`str`, `list[...]`, discriminator values) that are not keys of the body; only
    parts that index into the body are kept (and, for a missing field, its name)."""
    parts: list[str] = []
    value: Any = body
    for i, part in enumerate(loc):
        if isinstance(value, dict) and isinstance(part, str) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        elif missing and i == len(loc) - 1:
            parts.append(str(part))
            return parts, None
        else:
            continue
        parts.append(str(part))
    return parts, value


def validation_error(errors: list[dict[str, Any]], body: Any = None) -> InvalidRequest:
    """Pydantic's validation errors as one refusal, in words, naming the most specific field."""
    if not errors:
        return InvalidRequest("Invalid request.", code="invalid_value")
    located = []
    for error in errors:
        parts, value = _locate(tuple(error.get("loc", ())), body, error.get("type") == "missing")
        located.append((parts, value, error))
    deepest = max(len(parts) for parts, _, _ in located)
    same_place = [item for item in located if len(item[0]) == deepest]
    parts, value, first = same_place[0]
    expected = [_EXPECTED[e["type"]] for _, _, e in same_place if e["type"] in _EXPECTED]
    return _describe(first, parts, value, list(dict.fromkeys(expected)))


def _describe(error: dict[str, Any], parts: list[str], value: Any, expected: list[str]) -> InvalidRequest:
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind == CROSS_FIELD:  # a rule over several fields names the one to change
        return InvalidRequest(str(error.get("msg", "invalid value"))[:MAX_MESSAGE_CHARS], param=ctx.get("param"), code="invalid_value")
    param = _dotted(tuple(parts)) or None
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"Unsupported parameter: '{param}' is not supported by this service.",
            param=param,
            code="unsupported_parameter",
        )
    if expected:
        message = f"Invalid type for '{param}': expected {' or '.join(expected)}, but got {_json_type(value)} instead."
        return InvalidRequest(message[:MAX_MESSAGE_CHARS], param=param, code="invalid_type")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag_param = f"{param}.type" if param else "type"
        tags = ctx.get("expected_tags", "")
        if kind == "union_tag_not_found":
            return InvalidRequest(f"Missing required parameter: '{tag_param}'.", param=tag_param, code="missing_required_parameter")
        message = f"Invalid value for '{tag_param}': '{_safe(ctx.get('tag', ''))}' is not one of {tags}."
        return InvalidRequest(message[:MAX_MESSAGE_CHARS], param=tag_param, code="invalid_value")
    detail = str(error.get("msg", "invalid value"))
    detail = detail.removeprefix("Value error, ").replace("Input should be", "must be")
    detail = detail.replace("List should have", "must have").replace(" after validation", "")
    if kind == "literal_error":
        detail = f"'{_safe(value)}' is not one of {ctx.get('expected', '')}"
    message = f"Invalid value for '{param}': {detail}." if param else f"{detail}."
    return InvalidRequest(message[:MAX_MESSAGE_CHARS], param=param, code="invalid_value")
