"""`SpeechConfig` and `VadConfig`, torch-free (the HTTP ingress validates them without loading a model)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["OPENAI_VOICES", "OUTPUT_RATE", "SpeechConfig", "VadConfig", "VoiceSpec"]

OUTPUT_RATE = 24_000  # what /v1/audio/speech and the realtime API speak (OpenAI's pcm is 24 kHz mono s16le)
SpeechEngineName = Literal["hibari", "espeak"]
# OpenAI's voice names (audio.speech, chat audio, realtime); each maps to one configured voice.
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse")


class VoiceSpec(BaseModel):
    """One voice a client may name: which engine speaks it and that engine's own voice name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: SpeechEngineName = Field(description="hibari (neural, English) or espeak (espeak-ng: many languages)")
    voice: str = Field(
        description="The engine's voice: hibari's 'heart' (the one inside its wheel), or an espeak-ng voice "
        "with an optional variant ('en-us', 'en-gb+m3', 'de', 'fr'); `espeak-ng --voices` lists them"
    )
    speed: float = Field(1.0, gt=0, le=4.0, description="This voice's pace at a request's speed 1.0")


def _default_voices() -> dict[str, VoiceSpec]:
    # hibari's wheel holds one voice ("heart"); its others download on first use, which these machines
    # cannot do. Every OpenAI name speaks with it, and espeak-ng adds languages under their own names.
    voices = {name: VoiceSpec(engine="hibari", voice="heart") for name in OPENAI_VOICES}
    for lang in ("en-us", "en-gb", "de", "fr", "es", "it", "pt", "nl"):
        voices[f"espeak-{lang}"] = VoiceSpec(engine="espeak", voice=lang)
    return voices


class VadConfig(BaseModel):
    """Server VAD defaults for /v1/realtime (Silero); a session's `turn_detection` overrides them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Speech probability above which a window is speech")
    prefix_padding_ms: int = Field(300, ge=0, le=5000, description="Audio kept from before the speech started")
    silence_duration_ms: int = Field(500, ge=0, le=10_000, description="Silence that ends a turn")


class SpeechConfig(BaseModel):
    """The Speech deployment: text to speech for /v1/audio/speech, audio answers and /v1/realtime."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voices: dict[str, VoiceSpec] = Field(
        default_factory=_default_voices,
        description="The voices clients may name (OpenAI's names and any others) and what speaks each",
    )
    default_voice: str = Field("alloy", description="The voice of a realtime session that names none")
    max_input_chars: int = Field(4096, ge=1, description="Longest `input` of /v1/audio/speech (OpenAI's limit)")
    threads: int = Field(1, ge=1, description="ONNX Runtime threads of the neural engine")
    vad: VadConfig = Field(default_factory=VadConfig, description="Server VAD defaults of realtime sessions")

    @model_validator(mode="after")
    def _check(self) -> SpeechConfig:
        if not self.voices:
            raise ValueError("speech.voices needs at least one voice")
        if self.default_voice not in self.voices:
            raise ValueError(f"speech.default_voice={self.default_voice!r} is not in speech.voices ({', '.join(self.voices)})")
        return self
