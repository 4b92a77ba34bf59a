"""`ClipConfig`, torch-free (the HTTP ingress validates it without loading open_clip)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modalities.devices import TorchDevice
from modalities.vision.decode import ImageLimits

__all__ = ["DEFAULT_FEATURE_LAYER", "DEFAULT_MODEL_NAME", "DEFAULT_PRETRAINED", "ClipConfig", "DocumentLimits", "OcrConfig"]

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


class DocumentLimits(BaseModel):
    """Bounds on one client document (PDF), checked while it is read in a sandboxed process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest PDF accepted, in bytes.")
    max_pages: int = Field(20, ge=1, description="Most pages a PDF may have (more: 400, none read).")
    max_chars: int = Field(
        20_000, ge=1, description="Characters of a document's text the prompt gets; the rest is cut (the prompt says so)."
    )
    render_dpi: int = Field(150, ge=36, le=600, description="Resolution scanned pages are rendered at for OCR.")
    max_page_pixels: int = Field(
        8_000_000, gt=0, description="A page that would render larger is rendered at a lower resolution."
    )
    min_text_chars: int = Field(
        16, ge=0, description="A page whose text layer has fewer characters is treated as scanned: rendered and OCR'd."
    )
    timeout_s: float = Field(30.0, gt=0, description="Wall-clock limit for reading one document (else 400).")
    memory_mib: int = Field(
        1024, ge=128, description="Address-space limit of the process that parses a document (a bomb hits it)."
    )


class OcrConfig(BaseModel):
    """The OCR path of the vision deployment (RapidOCR: PP-OCRv4 detection + recognition on ONNX Runtime)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_confidence: float = Field(0.5, ge=0, le=1, description="Lines read with a lower confidence are dropped.")
    max_side: int = Field(
        2000, ge=320, le=8000, description="Longest image side the text detector sees (larger images are scaled down)."
    )
    max_chars: int = Field(
        4000, ge=1, description="Characters of an image's text the prompt gets; the rest is cut (and said so)."
    )
    threads: int | None = Field(
        None, ge=1, description="ONNX Runtime intra-op threads per OCR model; null: the replica's num_cpus."
    )
    cache_mib: float = Field(16.0, ge=0, description="Per-replica cache of OCR results keyed by the image's SHA-256.")
    image_limits: ImageLimits = Field(default_factory=ImageLimits, description="Bounds on each decoded client image.")
    documents: DocumentLimits = Field(default_factory=DocumentLimits, description="Bounds on PDF documents.")
