"""The Audio API's transcriptions: form fields and response formats (`/v1/audio/transcriptions`)."""

from __future__ import annotations

from typing import Literal, get_args

TranscriptionFormat = Literal["json", "text", "verbose_json"]
TRANSCRIPTION_FORMATS: tuple[str, ...] = get_args(TranscriptionFormat)
MAX_FORM_FIELDS = 8
