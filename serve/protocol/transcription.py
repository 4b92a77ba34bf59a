"""The Audio API's transcriptions and translations (`/v1/audio/transcriptions`,
`/v1/audio/translations`): response formats, timestamp granularities and the validated request
(`serve.protocol.audio_form` reads it from the multipart form)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from modalities.audio.options import Task, TranscribeOptions

TranscriptionFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
TRANSCRIPTION_FORMATS: tuple[str, ...] = get_args(TranscriptionFormat)
TimestampGranularity = Literal["segment", "word"]
TIMESTAMP_GRANULARITIES: tuple[str, ...] = get_args(TimestampGranularity)
MAX_FORM_FIELDS = 16  # file, model, language, prompt, response_format, temperature, granularities, a few ignored


@dataclass(frozen=True)
class AudioTextRequest:
    """A validated transcription or translation form (the uploaded file travels beside it)."""

    task: Task
    model: str
    language: str | None  # a whisper code; None: the config's default (transcribe) or detected
    prompt: str | None
    response_format: TranscriptionFormat
    temperature: float
    timestamp_granularities: frozenset[str]

    @property
    def words(self) -> bool:
        """Word timestamps were asked for (they cost an alignment pass)."""
        return "word" in self.timestamp_granularities

    @property
    def segments(self) -> bool:
        """A verbose body carries segments: unless only words were asked for, as OpenAI does."""
        return self.timestamp_granularities != frozenset({"word"})

    def options(self) -> TranscribeOptions:
        return TranscribeOptions(
            task=self.task,
            language=self.language,
            prompt=self.prompt,
            temperature=self.temperature,
            word_timestamps=self.words,
        )
