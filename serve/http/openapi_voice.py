"""OpenAPI descriptions of the voice routes (speech), built with the helpers of `openapi.py` (see
there for how `openapi_extra` reaches the document). `/v1/realtime` is a WebSocket: OpenAPI has no
place for it; docs/api.md describes its events."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from serve.protocol.speech import CONTENT_TYPES, SpeechRequest

from .openapi import SECURITY, _component, _errors, _extra

SPEECH_REQUEST = _component(SpeechRequest, response=False)

# One server-sent event, as schemathesis parses an SSE stream (its `event` and `data` lines).
SPEECH_EVENT = {
    "type": "object",
    "description": "One server-sent event: `event` names it (speech.audio.delta, speech.audio.done, error), `data` is "
    "the event as JSON (a delta's `audio` is base64; done carries `usage`)",
    "required": ["event", "data"],
    "properties": {"event": {"type": "string", "enum": ["speech.audio.delta", "speech.audio.done", "error"]}, "data": {"type": "string"}},
}

SPEECH: dict[str, Any] = {
    "summary": "Speak text",
    "requestBody": {"required": True, "content": {"application/json": {"schema": SPEECH_REQUEST}}},
    "responses": {
        "200": {
            "description": "The audio in `response_format`, chunked a sentence at a time; with stream_format `sse`, "
            "`speech.audio.delta` events (base64 audio) then `speech.audio.done`",
            "content": {
                **{ctype: {"schema": {"type": "string", "format": "binary"}} for ctype in sorted(set(CONTENT_TYPES.values()))},
                "text/event-stream": {"schema": SPEECH_EVENT},
            },
        },
        **_errors("400", "401", "404", "408", "413", "429", "500", "503", "504"),
    },
    "security": SECURITY,
}


def speech(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for POST /v1/audio/speech."""
    return _extra(app, SPEECH)
