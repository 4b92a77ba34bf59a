"""The Audio API's service (`/v1/audio/transcriptions`, `/v1/audio/translations`): audio bytes →
Whisper's transcript, or its English translation, in OpenAI's response formats."""

from __future__ import annotations

from typing import Any

from modalities.audio.whisper_names import language_name
from serve.config import ChorusConfig
from serve.errors import InvalidRequest, model_not_found
from serve.protocol import subtitles
from serve.protocol.transcription import AudioTextRequest

# OpenAI's verbose translation: "The language of the output translation (always `english`)."
TRANSLATION_LANGUAGE = "english"
SEGMENT_FIELDS = (
    "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob",
)  # fmt: skip


class TranscriptionService:
    def __init__(self, config: ChorusConfig, audio_encoder: Any) -> None:
        self.config = config
        self.encoder = audio_encoder

    def model_names(self) -> list[str]:
        return [self.config.whisper_model_name(), *self.config.transcription_model_names]

    def check(self, model: str) -> None:
        if model not in self.model_names():
            if not model:
                raise InvalidRequest("the 'model' field is required", param="model", code="missing_model")
            raise model_not_found(model)

    async def run(self, data: bytes, req: AudioTextRequest) -> str | dict[str, Any]:
        """The transcript (or translation) of `data`: text for `text`, `srt` and `vtt`, else
        OpenAI's JSON body for the format."""
        if not data:
            raise InvalidRequest("the uploaded file is empty", param="file", code="invalid_media")
        result = await self.encoder.transcribe.remote(data, req.options())
        segments = result.segments or []
        if req.response_format == "text":
            return result.transcript
        if req.response_format == "srt":
            return subtitles.srt(segments)
        if req.response_format == "vtt":
            return subtitles.vtt(segments)
        if req.response_format == "json":
            return {"text": result.transcript}
        return verbose_body(req, result.transcript, result.language, result.duration_s, segments, result.words)


def verbose_body(
    req: AudioTextRequest,
    text: str,
    language: str | None,
    duration_s: float,
    segments: list[dict[str, Any]],
    words: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """OpenAI's verbose_json: task, language (its English name), duration, text, then segments
    unless only words were asked for, and words when they were."""
    spoken = language_name(language) if language else None
    body: dict[str, Any] = {
        "task": req.task,
        "language": TRANSLATION_LANGUAGE if req.task == "translate" else spoken,
        "duration": round(duration_s, 3),
        "text": text,
    }
    if req.segments:
        body["segments"] = [{"id": i, **{k: seg[k] for k in SEGMENT_FIELDS}} for i, seg in enumerate(segments)]
    if req.words:
        body["words"] = list(words or [])
    return body
