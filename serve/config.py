"""The service configuration: one validated object, the `args` of a Serve config file.

`ChorusConfig` is what a Serve config file passes as the application's `args`; model choice is
configuration here, never code. Per-deployment scaling options (`num_replicas`,
`autoscaling_config`, `max_ongoing_requests`, `ray_actor_options`) live in the same object under
`deployments`; Serve's own `deployments:` section in a config file may override them at deploy time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fusion.registry import MODALITIES, FusionMode, ModalitySpec
from modalities.audio.config import WhisperConfig
from modalities.llm.config import LLMConfig
from modalities.paths import PACKAGED, PACKAGED_WHISPER_NAME
from modalities.speech.config import SpeechConfig
from modalities.vision.config import ClipConfig, OcrConfig

from .admission.auth import AuthConfig
from .policy import Policy, PolicyConfig, load_policy
from .services.fetch import RemoteMediaConfig
from .store.config import StoreConfig

INGRESS, DECODER, SPEECH = "Ingress", "LLMDecoder", "Speech"
REPO_ROOT = Path(__file__).resolve().parents[1]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingConfig(_Strict):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas kept running")
    max_replicas: int = Field(1, ge=1, description="Most replicas Serve may start")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Ongoing requests per replica to aim for")
    upscale_delay_s: float = Field(10.0, ge=0, description="How long load must stay high before adding a replica")
    downscale_delay_s: float = Field(60.0, ge=0, description="How long load must stay low before removing one")


# Ray Serve settings every replica runs with (its actor's `runtime_env`, so `serve run`, `serve
# deploy` on any cluster and the in-process apps of the bench and the tests all get them): user code
# and the handles' router run on the replica's own event loop, where Serve's gRPC channel between
# replicas delivers, instead of on threads of their own. Two of the settings
# `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` bundles (the ingress picks the gRPC channel per call, see
# `Ingress._chat`); together they took the ingress ↔ decoder round trip before the first token
# from 5.0 to 2.7 ms (README "Benchmarks"). Our code is fit for it: whatever blocks (encoders,
# projectors, decode steps) runs in threads of its own, never on the loop.
REPLICA_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


class DeploymentOptions(_Strict):
    """Ray Serve options for one deployment."""

    num_replicas: int | None = Field(1, ge=1, description="Fixed replica count (ignored when autoscaling is set)")
    autoscaling_config: AutoscalingConfig | None = Field(None, description="Scale between min and max replicas")
    max_ongoing_requests: int = Field(16, ge=1, description="Requests one replica handles at once")
    max_queued_requests: int = Field(
        64, ge=-1, description="Requests waiting for this deployment beyond that; more are refused at once (503). -1 = unbounded"
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs each replica claims; torch threads follow it")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each replica claims (1 = a GPU of its own)")
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between replica health checks")
    health_check_timeout_s: float = Field(30.0, gt=0, description="A health check slower than this fails")
    graceful_shutdown_timeout_s: float | None = Field(
        None,
        ge=0,
        description="Time a replica being stopped (redeploy, downscale) gets to finish its in-flight requests; "
        "null = the role's default: limits.request_timeout_s + 10 s for the ingress and the decoder (so a "
        "stream is never cut), 20 s for the encoders",
    )

    def to_serve_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": {
                "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus,
                "runtime_env": {"env_vars": dict(REPLICA_ENV)},
            },
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config.model_dump()
        else:
            options["num_replicas"] = self.num_replicas
        return options


STREAM_DRAIN_SLACK_S = 10.0
ENCODER_DRAIN_S = 20.0


class Deployments(_Strict):
    # The ingress and the decoder hold streams for up to the request deadline: a replica being
    # replaced drains them that long (Serve force-kills it after its graceful timeout).
    ingress: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(num_cpus=0.5, max_ongoing_requests=64),
        description="The HTTP ingress (FastAPI; no model code)",
    )
    audio_encoder: DeploymentOptions = Field(default_factory=DeploymentOptions, description="Whisper (AudioEncoder)")
    vision_encoder: DeploymentOptions = Field(
        default_factory=DeploymentOptions, description="OCR, documents and CLIP (VisionEncoder)"
    )
    llm_decoder: DeploymentOptions = Field(
        default_factory=DeploymentOptions, description="The LLM and the projectors (LLMDecoder)"
    )
    speech: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(num_cpus=0.5, max_ongoing_requests=16),
        description="Text to speech (Speech): /v1/audio/speech, spoken chat answers, /v1/realtime",
    )

    def encoder(self, media: ModalitySpec) -> DeploymentOptions:
        """The options of the deployment that encodes `media`."""
        return {"audio": self.audio_encoder, "image": self.vision_encoder, "document": self.vision_encoder}[media.kind]


class FusionConfig(_Strict):
    audio_mode: FusionMode = Field(
        "transcript", description="Default way audio reaches the LLM; requests may override with chorus.fusion"
    )
    audio_projector: str | None = Field(
        None,
        description="Audio projector checkpoint (directory or .safetensors), or 'packaged' for the one shipped "
        "for Whisper-base × SmolLM2-135M-Instruct; needed for embed/both modes",
    )
    image_mode: FusionMode = Field(
        "ocr",
        description="Default way images reach the LLM: `ocr` (the text read from the image, quoted as data), `embed` "
        "(CLIP patches through the vision projector; needs `vision`), `both`; requests may override with chorus.fusion",
    )
    vision_projector: str | None = Field(None, description="Vision projector checkpoint; needed for image embed/both")
    allow_random_projectors: bool = Field(
        False, description="Tests only: build untrained projectors when no checkpoint is set"
    )

    def mode(self, media: ModalitySpec) -> FusionMode:
        """The configured fusion mode of `media` (its registry default where the config has none)."""
        return {"audio": self.audio_mode, "image": self.image_mode}.get(media.kind, media.default_mode)

    def projector(self, media: ModalitySpec) -> str | None:
        """The projector checkpoint configured for `media`, if any."""
        return {"audio": self.audio_projector, "image": self.vision_projector}.get(media.kind)


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(
        40 * 2**20, ge=1024, description="Largest request body (25 MiB of audio is ~34 MiB as base64 JSON)"
    )
    max_media_items: int = Field(8, ge=0, description="Images + audio clips per request")
    default_max_tokens: int = Field(512, ge=1, description="max_tokens when a request sets none")
    max_text_chars: int = Field(
        100_000,
        ge=1,
        description="Characters of text (message text + stop strings) per request, checked before tokenizing",
    )
    max_in_flight: int = Field(
        64,
        ge=1,
        description="Requests one ingress replica works on at once (counted once their body is in); more get 503 "
        "+ Retry-After",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="A request body must arrive whole within this many seconds (else 408)"
    )
    body_idle_timeout_s: float = Field(
        10.0, gt=0, description="Longest gap between two pieces of a request body (else 408)"
    )
    min_body_bytes_per_s: int = Field(
        4096,
        ge=0,
        description="Slowest average body rate accepted once body_idle_timeout_s has passed (else 408); 0 = any",
    )
    request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Deadline per request: a response not started by then is 504; a stream still running ends "
        "with an error event",
    )


class RealtimeConfig(_Strict):
    """Limits of `/v1/realtime` sessions (each one is a WebSocket held by an ingress replica)."""

    max_sessions: int = Field(64, ge=1, description="Sessions one ingress replica holds at once; more are closed with 1013")
    max_session_s: float = Field(3600.0, gt=0, description="A session is closed (1000) after this long, as OpenAI's 60 minutes")
    max_buffer_s: float = Field(
        120.0, gt=0, description="Audio the input buffer holds before a commit; appends beyond get an error event"
    )
    max_turn_s: float = Field(
        30.0, gt=0, description="With server VAD, a caller speaking longer than this without a pause has the turn cut here"
    )
    max_pending_bytes: int = Field(
        8 * 2**20,
        ge=2**16,
        description="Server events queued for a client that does not read them; over this the socket is closed (1008)",
    )
    send_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for the connection to take one server event (a client not reading, the socket "
        "buffers full); past it the socket is closed (1008)",
    )


class ChorusConfig(_Strict):
    served_model_name: str = Field("chorus", description="The model id clients send to /v1/chat/completions")
    transcription_model_names: list[str] = Field(
        default_factory=lambda: ["whisper-1"],
        description="Model ids /v1/audio/transcriptions accepts besides the configured Whisper name",
    )
    remote_media: RemoteMediaConfig = Field(
        default_factory=RemoteMediaConfig, description="Fetching remote image URLs (off: data URLs only)"
    )
    llm: LLMConfig = Field(default_factory=LLMConfig, description="The decoder LLM: weights, quantization, engine")
    whisper: WhisperConfig = Field(default_factory=WhisperConfig, description="The Whisper audio encoder")
    vision: ClipConfig | None = Field(None, description="CLIP encoder (image embed/both modes); None = no CLIP")
    ocr: OcrConfig | None = Field(
        default_factory=OcrConfig,
        description="OCR of images and PDF documents in the vision deployment (on by default); None = off",
    )
    speech: SpeechConfig | None = Field(
        default_factory=SpeechConfig,
        description="Text to speech (hibari's neural English voice, espeak-ng for other languages) and the "
        "realtime API's VAD; None = no speech out (/v1/audio/speech and /v1/realtime answer 404)",
    )
    speech_model_names: list[str] = Field(
        default_factory=lambda: ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "hibari"],
        description="Model ids /v1/audio/speech accepts (one speech model serves them all)",
    )
    realtime_model_names: list[str] = Field(
        default_factory=lambda: ["gpt-realtime", "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview"],
        description="Model ids /v1/realtime accepts besides served_model_name (the chat model answers them all)",
    )
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig, description="Limits of /v1/realtime sessions")
    fusion: FusionConfig = Field(
        default_factory=FusionConfig, description="How media reaches the LLM: fusion modes and projector checkpoints"
    )
    console: bool = Field(
        True, description="Serve the web console at / (static files, same origin, the public API only); false = 404"
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys and per-key rate limits")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request size, time and concurrency limits")
    policy: PolicyConfig | None = Field(
        None,
        description="The company policy: persona, topics, refusal, forbidden phrases, secrets, handoff, rails "
        "(a mapping, or the path of a policy YAML such as deploy/policies/northwind.yaml); None = no policy",
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig,
        description="Where responses, conversations, their media and the audit log are kept, and for how long",
    )
    deployments: Deployments = Field(
        default_factory=Deployments, description="Ray Serve options per deployment (replicas, CPUs/GPUs, queues)"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_remote_flag(cls, data: Any) -> Any:
        # `allow_remote_media_urls` never fetched anything; `false` is what it always meant.
        if isinstance(data, dict) and "allow_remote_media_urls" in data:
            data = dict(data)
            if data.pop("allow_remote_media_urls"):
                raise ValueError(
                    "allow_remote_media_urls is replaced by remote_media: {enabled: true, allowed_hosts: [...]}"
                )
        return data

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_file(cls, value: Any) -> Any:
        """A path is read here, once: the replicas get the policy itself, whatever their working directory."""
        if not isinstance(value, str | Path):
            return value
        path = Path(value).expanduser()
        if not path.is_absolute() and not path.exists():
            path = REPO_ROOT / path  # the repository's deploy/ files, from anywhere
        return load_policy(path).model_dump()

    @field_validator("policy")
    @classmethod
    def _policy_builds(cls, value: PolicyConfig | None) -> PolicyConfig | None:
        if value is not None:
            Policy(value)  # its cross-checks (a secret spelled differently in the instructions) fail here
        return value

    @model_validator(mode="after")
    def _check(self) -> ChorusConfig:
        stream_drain = self.limits.request_timeout_s + STREAM_DRAIN_SLACK_S
        deployments = self.deployments
        for options, default in (
            (deployments.ingress, stream_drain),
            (deployments.llm_decoder, stream_drain),
            (deployments.audio_encoder, ENCODER_DRAIN_S),
            (deployments.vision_encoder, ENCODER_DRAIN_S),
            (deployments.speech, stream_drain),
        ):
            if options.graceful_shutdown_timeout_s is None:
                options.graceful_shutdown_timeout_s = default
        for media in MODALITIES.values():
            if self.fusion.mode(media) not in media.modes:
                raise ValueError(
                    f"fusion.{media.kind}_mode={self.fusion.mode(media)!r}: {media.kind} takes {', '.join(media.modes)}"
                )
        if self.fusion.audio_mode != "transcript" and not (
            self.fusion.audio_projector or self.fusion.allow_random_projectors
        ):
            raise ValueError(f"fusion.audio_mode={self.fusion.audio_mode!r} needs fusion.audio_projector")
        embeddable = self.vision is not None and (self.fusion.vision_projector or self.fusion.allow_random_projectors)
        if embeddable and "image_mode" not in self.fusion.model_fields_set:
            # A config written before OCR existed, with CLIP and its projector: CLIP was the only way
            # in, keep it so (`image_mode` set explicitly says otherwise).
            self.fusion.image_mode = "embed"
        image_mode = self.fusion.image_mode
        if image_mode in ("embed", "both") and self.vision is None:
            raise ValueError(f"fusion.image_mode={image_mode!r} needs `vision` (a CLIP encoder)")
        if image_mode in ("embed", "both") and not (self.fusion.vision_projector or self.fusion.allow_random_projectors):
            raise ValueError(f"fusion.image_mode={image_mode!r} needs fusion.vision_projector")
        if image_mode in ("ocr", "both") and self.ocr is None and self.vision is not None:
            raise ValueError(f"fusion.image_mode={image_mode!r} needs `ocr` (set fusion.image_mode: embed to use CLIP alone)")
        return self

    def encoder_config(self, media: ModalitySpec) -> WhisperConfig | ClipConfig | OcrConfig | None:
        """The first encoder config that takes `media`; None where this deployment does not take it."""
        return next((c for c in (getattr(self, f) for f in media.config_fields) if c is not None), None)

    def enabled_modalities(self) -> list[ModalitySpec]:
        """The registry's modalities this deployment has an encoder for."""
        return [media for media in MODALITIES.values() if self.encoder_config(media) is not None]

    def whisper_model_name(self) -> str:
        model = self.whisper.model
        return PACKAGED_WHISPER_NAME if model == PACKAGED else Path(str(model)).stem
