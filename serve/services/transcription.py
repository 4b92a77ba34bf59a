"""The transcription service (`/v1/audio/transcriptions`): audio bytes → Whisper's transcript in
OpenAI's response formats."""

from __future__ import annotations

from typing import Any

from serve.config import ChorusConfig
from serve.errors import InvalidRequest, model_not_found
from serve.protocol import TRANSCRIPTION_FORMATS


class TranscriptionService:
    def __init__(self, config: ChorusConfig, audio_encoder: Any) -> None:
        self.config = config
        self.encoder = audio_encoder

    def model_names(self) -> list[str]:
        return [self.config.whisper_model_name(), *self.config.transcription_model_names]

    def check(self, model: str, response_format: str) -> None:
        if model not in self.model_names():
            if not model:
                raise InvalidRequest("the 'model' field is required", param="model", code="missing_model")
            raise model_not_found(model)
        if response_format not in TRANSCRIPTION_FORMATS:
            raise InvalidRequest(
                f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}",
                param="response_format",
                code="invalid_value",
            )

    async def transcribe(self, data: bytes, response_format: str, language: str | None) -> str | dict[str, Any]:
        """The transcript: plain text for `text`, else OpenAI's JSON body for the format."""
        if not data:
            raise InvalidRequest("the uploaded file is empty", param="file", code="invalid_media")
        result = await self.encoder.encode.remote(data, False, True, language)
        if response_format == "text":
            return result.transcript
        if response_format == "json":
            return {"text": result.transcript}
        return {
            "task": "transcribe",
            "language": result.language,
            "duration": round(result.duration_s, 3),
            "text": result.transcript,
            "segments": [
                {"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
                for i, s in enumerate(result.segments or [])
            ],
        }
