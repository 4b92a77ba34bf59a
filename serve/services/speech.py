"""The speech service (`/v1/audio/speech`): a validated request → the Speech deployment's audio,
as chunked bytes or as OpenAI's speech SSE events (`speech.audio.delta`, `speech.audio.done`)."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from serve.config import ChorusConfig
from serve.errors import Internal, InvalidRequest, NotFound, model_not_found
from serve.protocol.speech import CONTENT_TYPES, ENCODABLE_FORMATS, SpeechRequest

log = logging.getLogger("ray.serve.chorus.speech")
NO_SPEECH = "this deployment has no speech synthesis configured; set `speech` in the service config"


def unknown_voice(voice: str, known: list[str], param: str = "voice") -> InvalidRequest:
    return InvalidRequest(
        f"voice {voice[:64]!r} is not available; voices: {', '.join(sorted(known))}", param=param, code="invalid_value"
    )


@dataclass
class SpeechStream:
    """A started synthesis: its first chunk is in (so a failure before any audio still gets a status)."""

    first: bytes | None
    rest: AsyncIterator[bytes]
    cancel: Any  # () -> None: stop the synthesis (the client left)
    content_type: str

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.first:
            yield self.first
        async for chunk in self.rest:
            if chunk:
                yield chunk


class SpeechService:
    def __init__(self, config: ChorusConfig, handle: Any) -> None:
        self.config = config
        self.handle = handle
        self.voices = sorted(config.speech.voices) if config.speech is not None else []

    @property
    def enabled(self) -> bool:
        return self.handle is not None and self.config.speech is not None

    def model_names(self) -> list[str]:
        return list(self.config.speech_model_names) if self.enabled else []

    def check_voice(self, voice: str, param: str = "voice") -> str:
        if voice not in self.voices:
            raise unknown_voice(voice, self.voices, param)
        return voice

    def check(self, req: SpeechRequest) -> None:
        if not self.enabled:
            raise NotFound(NO_SPEECH, code="speech_not_configured")
        if req.model not in self.model_names():
            raise model_not_found(req.model)
        if req.response_format not in ENCODABLE_FORMATS:
            raise InvalidRequest(
                f"response_format {req.response_format!r} cannot be encoded here; supported: {', '.join(ENCODABLE_FORMATS)}",
                param="response_format",
                code="unsupported_format",
            )
        limit = self.config.speech.max_input_chars
        if len(req.input) > limit:
            raise InvalidRequest(f"input is over {limit} characters", param="input", code="string_above_max_length")
        if not any(c.isalnum() for c in req.input):
            raise InvalidRequest("input has nothing to say (no letters or digits)", param="input", code="invalid_value")
        self.check_voice(req.voice)

    def stream(self, text: str, voice: str, speed: float = 1.0, fmt: str = "pcm") -> Any:
        """The deployment's stream of `fmt` chunks for `text`, one per sentence (a
        `DeploymentResponseGenerator`: iterate it, `cancel()` it); `pcm` is 24 kHz s16le."""
        return self.handle.options(stream=True).synthesize.remote(text, voice, speed, fmt)

    async def start(self, req: SpeechRequest) -> SpeechStream:
        self.check(req)
        stream = self.stream(req.input, req.voice, req.speed, req.response_format)
        iterator = stream.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            stream.cancel()
            raise
        return SpeechStream(first, iterator, stream.cancel, CONTENT_TYPES[req.response_format])

    @staticmethod
    async def sse(req: SpeechRequest, stream: SpeechStream, request_id: str = "-") -> AsyncIterator[dict[str, Any]]:
        """OpenAI's speech events: a delta per chunk (base64 audio), then done with usage. Speech is
        counted in characters of input, as tts-1 was billed; there are no output tokens. A failure
        after the first audio ends the stream with an `error` event."""
        try:
            async for chunk in stream.chunks():
                yield {"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode("ascii")}
        except Exception:
            log.exception("speech failed mid-stream request_id=%s", request_id)
            yield {"type": "error", **Internal(f"speech synthesis failed (request id {request_id})", code="server_error").body()}
            return
        chars = len(req.input)
        yield {"type": "speech.audio.done", "usage": {"input_tokens": chars, "output_tokens": 0, "total_tokens": chars}}
