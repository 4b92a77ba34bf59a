"""The Audio API's speech (`/v1/audio/speech`): OpenAI's request, in its field order."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import Strict

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
MAX_SPEECH_INPUT = 4096  # OpenAI's limit on `input`; `speech.max_input_chars` may lower it
SPEED_RANGE = (0.25, 4.0)


class SpeechRequest(Strict):
    """`response_format` takes OpenAI's six names; the ones this deployment cannot encode (aac) are
    refused by the service with the list it can. `instructions` is accepted and does nothing here:
    neither engine takes a speaking style (documented in docs/api.md)."""

    model: str
    input: str = Field(min_length=1, max_length=MAX_SPEECH_INPUT)
    voice: str = Field(min_length=1, max_length=64)
    instructions: str | None = Field(default=None, max_length=MAX_SPEECH_INPUT)
    response_format: SpeechFormat = "mp3"
    speed: float = Field(default=1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1], allow_inf_nan=False)
    stream_format: Literal["audio", "sse"] = "audio"

# What the Speech deployment encodes (libsndfile has no AAC encoder); a unit test keeps this equal to
# `modalities.speech.formats.ENCODABLE`, which the light ingress does not import.
ENCODABLE_FORMATS: tuple[str, ...] = ("mp3", "opus", "flac", "wav", "pcm")
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
