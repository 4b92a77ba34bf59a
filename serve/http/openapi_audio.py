"""OpenAPI descriptions of the Audio API's routes (transcriptions, translations), built with the
helpers of `openapi.py` (see there for how `openapi_extra` reaches the document). The forms are
multipart: FastAPI cannot derive them from the routes, so they are written out here, from the same
constants the form parser checks against."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from modalities.audio.options import MAX_PROMPT_CHARS, MAX_TEMPERATURE
from serve.protocol.transcription import TIMESTAMP_GRANULARITIES, TRANSCRIPTION_FORMATS

from .openapi import SECURITY, _errors, _extra, _ref

FILE = {"type": "string", "format": "binary", "description": "The audio file: wav, flac, ogg or mp3"}
MODEL = {
    "type": "string",
    "description": "'whisper-1', or the configured Whisper's name ('whisper-base' by default)",
    "examples": ["whisper-1"],
}
PROMPT = {
    "type": "string",
    "maxLength": MAX_PROMPT_CHARS,
    "description": "Text to guide the style or vocabulary, given to every 30-s window (Whisper reads its last 224 tokens)",
}
RESPONSE_FORMAT = {"type": "string", "enum": list(TRANSCRIPTION_FORMATS), "default": "json"}
TEMPERATURE = {
    "type": "number",
    "minimum": 0,
    "maximum": MAX_TEMPERATURE,
    "default": 0,
    "description": "Sampling temperature; 0 decodes greedily",
}


def _form(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return _ref(name, {"type": "object", "title": name, "required": ["file", "model"], "properties": properties})


TRANSCRIPTION_REQUEST = _form(
    "TranscriptionRequest",
    {
        "file": FILE,
        "model": MODEL,
        "language": {"type": "string", "description": "ISO-639-1 code of the spoken language (the configured default if omitted)"},
        "prompt": PROMPT,
        "response_format": RESPONSE_FORMAT,
        "temperature": TEMPERATURE,
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": list(TIMESTAMP_GRANULARITIES)},
            "description": "With verbose_json: 'segment' (the default) and/or 'word' (costs an alignment pass); "
            "'word' with any other format is a 400. The bare name `timestamp_granularities` is accepted too.",
        },
    },
)
TRANSLATION_REQUEST = _form(
    "TranslationRequest",
    {"file": FILE, "model": MODEL, "prompt": PROMPT, "response_format": RESPONSE_FORMAT, "temperature": TEMPERATURE},
)
TRANSCRIPTION = _ref(
    "Transcription",
    {"type": "object", "title": "Transcription", "required": ["text"], "properties": {"text": {"type": "string"}}},
)
NUMBER, INTEGER = {"type": "number"}, {"type": "integer"}
SEGMENT = _ref(
    "TranscriptionSegment",
    {
        "type": "object",
        "title": "TranscriptionSegment",
        "required": [
            "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob",
        ],  # fmt: skip
        "properties": {
            "id": INTEGER,
            "seek": INTEGER,
            "start": NUMBER,
            "end": NUMBER,
            "text": {"type": "string"},
            "tokens": {"type": "array", "items": INTEGER},
            "temperature": NUMBER,
            "avg_logprob": NUMBER,
            "compression_ratio": NUMBER,
            "no_speech_prob": NUMBER,
        },
    },
)
WORD = _ref(
    "TranscriptionWord",
    {
        "type": "object",
        "title": "TranscriptionWord",
        "required": ["word", "start", "end"],
        "properties": {"word": {"type": "string"}, "start": NUMBER, "end": NUMBER},
    },
)
VERBOSE_TRANSCRIPTION = _ref(
    "VerboseTranscription",
    {
        "type": "object",
        "title": "VerboseTranscription",
        "description": "`segments` unless only words were asked for; `words` when they were. A translation's "
        "`language` is always 'english'.",
        "required": ["task", "language", "duration", "text"],
        "properties": {
            "task": {"type": "string", "enum": ["transcribe", "translate"]},
            "language": {"type": ["string", "null"], "description": "The language's English name, e.g. 'english'"},
            "duration": NUMBER,
            "text": {"type": "string"},
            "segments": {"type": "array", "items": SEGMENT},
            "words": {"type": "array", "items": WORD},
        },
    },
)


def _operation(summary: str, request: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": request, "encoding": {"file": {"contentType": "application/octet-stream"}}}
            },
        },
        "responses": {
            "200": {
                "description": "`{text}` (json), with segments and words (verbose_json), or plain text: the text "
                "(text), SubRip (srt) or WebVTT (vtt)",
                "content": {
                    "application/json": {"schema": {"anyOf": [TRANSCRIPTION, VERBOSE_TRANSCRIPTION]}},
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            **_errors("400", "401", "404", "408", "413", "429", "500", "503", "504"),
        },
        "security": SECURITY,
    }


TRANSCRIPTIONS = _operation("Transcribe audio", TRANSCRIPTION_REQUEST)
TRANSLATIONS = _operation("Translate audio into English", TRANSLATION_REQUEST)


def transcriptions(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for POST /v1/audio/transcriptions."""
    return _extra(app, TRANSCRIPTIONS)


def translations(app: FastAPI) -> dict[str, Any]:
    """`openapi_extra` for POST /v1/audio/translations."""
    return _extra(app, TRANSLATIONS)
