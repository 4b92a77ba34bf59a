"""The Audio API's multipart form → a validated `AudioTextRequest` (import it as
`serve.protocol.audio_form`: it raises `serve.errors`, which imports this package).

Form values arrive as strings; each is checked here with a 400 that names its field. A field the
route does not take (`include[]`, `chunking_strategy`, a translation's `language`) is refused with
`unsupported_parameter`, as a JSON body's would be; `stream` is taken and ignored, as OpenAI
ignores it for whisper-1 (the transcript comes back whole).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from modalities.audio.options import MAX_PROMPT_CHARS, MAX_TEMPERATURE, Task
from modalities.audio.whisper_names import normalize_language
from serve.errors import InvalidRequest

from .transcription import TIMESTAMP_GRANULARITIES, TRANSCRIPTION_FORMATS, AudioTextRequest

# The openai clients send an array field as repeated `name[]` parts; curl users write the bare name.
GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")
FIELDS: dict[str, frozenset[str]] = {
    "translate": frozenset({"file", "model", "prompt", "response_format", "temperature", "stream"}),
}
FIELDS["transcribe"] = FIELDS["translate"] | {"language", *GRANULARITY_FIELDS}
MAX_SHOWN_CHARS = 24  # of a value quoted in a message
MAX_NAME_CHARS = 64  # of a field name


class Form(Protocol):
    """What is read from a parsed multipart form (starlette's `FormData`)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def getlist(self, key: str) -> list[Any]: ...

    def keys(self) -> Any: ...


def parse_audio_form(form: Form, task: Task) -> AudioTextRequest:
    """The form's fields for `task` (file aside), each checked; InvalidRequest names the bad one."""
    for name in form.keys():
        if name not in FIELDS[task]:
            shown = _shown(name, MAX_NAME_CHARS)
            raise InvalidRequest(
                f"Unsupported parameter: '{shown}' is not supported by this service.", param=shown, code="unsupported_parameter"
            )
    response_format = _text(form, "response_format") or "json"
    if response_format not in TRANSCRIPTION_FORMATS:
        raise InvalidRequest(
            f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}",
            param="response_format",
            code="invalid_value",
        )
    granularities = _granularities(form) if task == "transcribe" else frozenset()
    if "word" in granularities and response_format != "verbose_json":
        # OpenAI refuses word timestamps outside verbose_json, and ignores `segment` there
        raise InvalidRequest(
            "timestamp_granularities 'word' requires response_format 'verbose_json'",
            param="timestamp_granularities",
            code="invalid_value",
        )
    return AudioTextRequest(
        task=task,
        model=_text(form, "model") or "",
        language=_language(form) if task == "transcribe" else None,
        prompt=_prompt(form),
        response_format=response_format,  # type: ignore[arg-type]
        temperature=_temperature(form),
        timestamp_granularities=granularities,
    )


def _text(form: Form, name: str) -> str | None:
    """A text field's value; None when absent or empty (as OpenAI treats an empty field)."""
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a text field, not a file", param=name, code="invalid_type")
    return value or None


def _shown(value: str, limit: int = MAX_SHOWN_CHARS) -> str:
    return value[:limit].encode("ascii", "backslashreplace").decode()  # never echo input whole


def _language(form: Form) -> str | None:
    language = _text(form, "language")
    if language is None:
        return None
    try:
        return normalize_language(language)
    except ValueError as err:
        raise InvalidRequest(str(err), param="language", code="invalid_language") from err


def _prompt(form: Form) -> str | None:
    prompt = _text(form, "prompt")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"prompt is over {MAX_PROMPT_CHARS} characters (Whisper reads only its last 224 tokens)",
            param="prompt",
            code="prompt_too_long",
        )
    return prompt


def _temperature(form: Form) -> float:
    raw = _text(form, "temperature")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError as err:
        raise InvalidRequest(
            f"temperature must be a number from 0 to 1, got '{_shown(raw)}'", param="temperature", code="invalid_type"
        ) from err
    if not (math.isfinite(value) and 0.0 <= value <= MAX_TEMPERATURE):
        raise InvalidRequest("temperature must be a number from 0 to 1", param="temperature", code="invalid_value")
    return value


def _granularities(form: Form) -> frozenset[str]:
    values: list[str] = []
    for name in GRANULARITY_FIELDS:
        for value in form.getlist(name):
            if not isinstance(value, str):
                raise InvalidRequest(f"'{name}' must be a text field, not a file", param="timestamp_granularities", code="invalid_type")
            if value and value not in TIMESTAMP_GRANULARITIES:
                raise InvalidRequest(
                    f"timestamp_granularities must hold 'segment' and/or 'word', got '{_shown(value)}'",
                    param="timestamp_granularities",
                    code="invalid_value",
                )
            values.append(value)
    return frozenset(v for v in values if v)
