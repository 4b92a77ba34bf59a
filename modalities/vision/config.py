"""`ClipConfig`, torch-free (the HTTP ingress validates it without loading open_clip)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modalities.devices import TorchDevice
from modalities.vision.decode import ImageLimits

__all__ = ["DEFAULT_FEATURE_LAYER", "DEFAULT_MODEL_NAME", "DEFAULT_PRETRAINED", "ClipConfig"]

DEFAULT_MODEL_NAME = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
# LLaVA's `mm_vision_select_layer`: the last block's output is shaped by the contrastive objective
# (tuned to the pooled token); the one before keeps more spatial detail.
DEFAULT_FEATURE_LAYER = -2
# Model-name prefixes that make open_clip fetch config and weights itself, bypassing `pretrained`.
_SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")


class ClipConfig(BaseModel):
    """Which CLIP to load and which of its features to hand to the projector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field(
        DEFAULT_MODEL_NAME,
        description=(
            "open_clip architecture name (e.g. 'ViT-B-32', 'ViT-L-14-336'), or a path to a model-config "
            "JSON in open_clip's model_configs format for a custom architecture."
        ),
    )
    pretrained: str | None = Field(
        DEFAULT_PRETRAINED,
        description=(
            "Weights: an open_clip pretrained tag for this architecture (e.g. 'openai', 'laion2b_s34b_b79k'; "
            "needs a reachable model hub or a warm hub cache) or a local checkpoint path (.pt/.pth/.bin/"
            ".safetensors). null means random weights and needs random_init=true."
        ),
    )
    random_init: bool = Field(
        False,
        description=(
            "Explicitly allow pretrained=null (random weights, for tests); the runtime then reports "
            "has_weights=False."
        ),
    )
    feature_layer: int = Field(
        DEFAULT_FEATURE_LAYER,
        description=(
            "Index into the image tower's transformer blocks whose output gives the patch features; "
            "negative counts from the end (-1 = last block, -2 = second-to-last, as LLaVA's "
            "mm_vision_select_layer)."
        ),
    )
    drop_cls: bool = Field(True, description="Drop the class token from the patch features (LLaVA's 'patch' select).")
    device: TorchDevice = Field("cpu", description="Torch device for the model, e.g. 'cpu', 'cuda', 'cuda:1'.")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="Weight precision (open_clip's `precision`)."
    )
    threads: int | None = Field(
        None,
        ge=1,
        description=(
            "torch intra-op threads, set process-wide at load (a Ray replica starts with OMP_NUM_THREADS=1); "
            "null leaves torch's default."
        ),
    )
    image_limits: ImageLimits = Field(default_factory=ImageLimits, description="Bounds on each decoded client image.")
    feature_cache_mib: float = Field(
        64.0,
        ge=0,
        description="Per-replica cache of patch features keyed by the image's SHA-256 (same image twice → "
        "one encode); 0 disables it. ViT-L/14-336 features are ~1.6 MB per image in float16.",
    )

    @field_validator("model_name")
    @classmethod
    def _no_schema(cls, value: str) -> str:
        if value.startswith(_SCHEMA_PREFIXES):
            raise ValueError(
                f"model_name {value!r}: 'hf-hub:' / 'local-dir:' names are not supported; give an architecture "
                "name or model-config JSON and set pretrained to a tag or checkpoint path"
            )
        return value

    @model_validator(mode="after")
    def _weights_choice_explicit(self) -> ClipConfig:
        if self.pretrained is None and not self.random_init:
            raise ValueError(
                "no CLIP weights configured: set pretrained to an open_clip tag (e.g. 'openai') or a local "
                "checkpoint path; random weights need random_init=true"
            )
        if self.pretrained is not None and self.random_init:
            raise ValueError("random_init=true contradicts pretrained being set; choose one")
        return self
