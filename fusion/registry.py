"""The modality registry: one spec per input kind the assistant accepts besides text.

Parsing, planning, dispatch, splicing and metrics iterate this registry instead of checking kind
strings: adding an input kind is one `ModalitySpec` plus its runtime and encoder deployment. Specs
are plain data (no torch), so the light HTTP ingress reads them too. What a spec does not say is
read where it is known: the number of soft tokens per feature frame comes from the projector
checkpoint the decoder loads (`num_output_tokens`), the feature width from the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FusionMode = Literal["embed", "transcript", "both"]
FUSION_MODES: tuple[FusionMode, ...] = ("embed", "transcript", "both")
EMBED_MODES: frozenset[str] = frozenset({"embed", "both"})  # modes that splice projected features
CASCADE_MODES: frozenset[str] = frozenset({"transcript", "both"})  # modes that insert the encoder's text


@dataclass(frozen=True)
class ModalitySpec:
    """How one input kind travels from a request's content part to the decoder's input.

    kind: the registry key and the metrics tag ("audio", "image").
    part_type: the OpenAI content-part `type` that carries it.
    deployment: the Serve deployment that encodes it (its name in a config's `deployments:`).
    config_field: the `ChorusConfig` field that configures its encoder (None-valued = kind disabled).
    modes: the fusion modes it supports; `default_mode` when nothing else says.
    delimiters: text around its soft tokens, so the LLM sees where the media starts and ends.
    feature_shape: the encoder output's shape contract, for messages and docs.
    default_projector: the projector kind built when untrained projectors are allowed (tests).
    not_configured: what to tell a client who sends this kind where no encoder is configured.
    """

    kind: str
    part_type: str
    deployment: str
    config_field: str
    modes: tuple[FusionMode, ...]
    default_mode: FusionMode
    delimiters: tuple[str, str]
    feature_shape: str
    default_projector: str
    not_configured: str = ""

    def wants_features(self, mode: FusionMode) -> bool:
        return mode in EMBED_MODES

    def wants_text(self, mode: FusionMode) -> bool:
        return mode in CASCADE_MODES


AUDIO = ModalitySpec(
    kind="audio",
    part_type="input_audio",
    deployment="AudioEncoder",
    config_field="whisper",
    modes=FUSION_MODES,
    default_mode="transcript",
    delimiters=("<audio>", "</audio>"),
    feature_shape="[T, d_audio] Whisper encoder frames, 50 per second of audio",
    default_projector="stack4_swiglu",
    not_configured="this deployment has no Whisper encoder configured; set `whisper` in the service config",
)
IMAGE = ModalitySpec(
    kind="image",
    part_type="image_url",
    deployment="VisionEncoder",
    config_field="vision",
    modes=("embed",),
    default_mode="embed",
    delimiters=("<image>", "</image>"),
    feature_shape="[N, d_vision] CLIP patch tokens",
    default_projector="mlp2x_gelu",
    not_configured="this deployment has no CLIP weights configured; set `vision` (model_name + pretrained tag or a "
    "local checkpoint path) and `fusion.vision_projector` in the service config to accept images",
)

MODALITIES: dict[str, ModalitySpec] = {spec.kind: spec for spec in (AUDIO, IMAGE)}
BY_PART_TYPE: dict[str, ModalitySpec] = {spec.part_type: spec for spec in MODALITIES.values()}


def spec(kind: str) -> ModalitySpec:
    """The spec of `kind`; an unknown kind raises `ValueError` naming the known ones."""
    try:
        return MODALITIES[kind]
    except KeyError:
        raise ValueError(f"unknown modality {kind!r}; known: {', '.join(MODALITIES)}") from None
