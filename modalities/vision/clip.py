"""CLIP vision runtime: image bytes -> patch features (for the projector) and a pooled embedding.

Patch features follow LLaVA: the hidden state after one transformer block of the image tower
(default the second-to-last, `mm_vision_select_layer = -2`), class token dropped, no final LayerNorm
(`ln_post` belongs to the pooled head, not to intermediate layers). The block output is caught with a
forward hook on `visual.transformer.resblocks[feature_layer]`, so one forward pass yields both the
patches and the pooled embedding.

Only open_clip ViT image towers (`VisionTransformer`, with `transformer.resblocks`) are supported;
ResNet, ConvNeXt and other timm towers have no patch tokens of this kind and are refused.

Weights: `ClipConfig.pretrained` is an open_clip tag (fetched from the model hub where one is
reachable) or a local checkpoint path. No hub is reachable on the machines this project runs on;
`huggingface_hub` then retries for ~45 s before failing, unless `HF_HUB_OFFLINE=1` is set in the
deployment's environment, which makes the failure immediate.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from modalities.errors import MediaError
from modalities.vision.config import DEFAULT_FEATURE_LAYER, ClipConfig
from modalities.vision.decode import ImageLimits, decode_image

# ViT towers in open_clip prepend exactly one class token to the patch tokens.
NUM_PREFIX_TOKENS = 1
# Images more elongated than this are centre-cropped to it before preprocessing. CLIP's eval
# transform resizes the shorter side to the input size and then centre-crops a square, so the crop
# changes nothing in the result; it only stops the resize from materialising a huge intermediate
# (a 1x100000 image would become 224x22,400,000 pixels, ~15 GB, before the crop).
MAX_PREPROCESS_ASPECT = 20
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")

Preprocess = Callable[[Image.Image], torch.Tensor]


class ClipRuntime:
    """An open_clip ViT image tower plus its eval preprocessing; thread-safe for concurrent calls.

    `model` is an open_clip CLIP model (only `model.visual` is kept, so the text tower can be freed)
    and `preprocess` its eval transform (PIL image -> `[3, H, W]` float tensor).
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess,
        *,
        feature_layer: int = DEFAULT_FEATURE_LAYER,
        drop_cls: bool = True,
        has_weights: bool = False,
        image_limits: ImageLimits | None = None,
    ) -> None:
        visual = model.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if not isinstance(blocks, nn.ModuleList) or not hasattr(visual, "grid_size"):
            raise ValueError(
                f"patch features need an open_clip ViT image tower; this model's is {type(visual).__name__}"
            )
        depth = len(blocks)
        if not -depth <= feature_layer < depth:
            raise ValueError(
                f"feature_layer={feature_layer} is out of range for a {depth}-block image tower "
                f"(valid: {-depth}..{depth - 1})"
            )
        self._visual = visual.eval()
        self._preprocess = preprocess
        self.feature_layer = feature_layer
        self._drop_cls = drop_cls
        self._batch_first = visual.transformer.batch_first
        self.has_weights = has_weights
        self.image_limits = image_limits or ImageLimits()
        grid_h, grid_w = visual.grid_size
        self.num_patches = grid_h * grid_w
        self.width = visual.transformer.width
        self.embed_dim = visual.output_dim
        self.image_size: tuple[int, int] = tuple(visual.image_size)

        # One permanent hook writing to thread-local storage, rather than a hook added and removed
        # per call: registering while another thread runs the model races on the hook dict, and a
        # shared slot would hand one caller another's activations.
        capture = threading.local()
        self._capture = capture

        def keep_output(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if getattr(capture, "active", False):
                capture.hidden = output

        blocks[feature_layer].register_forward_hook(keep_output)

    @classmethod
    def from_config(cls, config: ClipConfig) -> ClipRuntime:
        """Build the model named by `config` with open_clip and wrap it.

        Raises `FileNotFoundError` for a missing config JSON or checkpoint, `ValueError` for an unknown
        architecture or tag, a checkpoint that does not fit the architecture, or a non-ViT tower, and
        `RuntimeError` when a tag's weights cannot be fetched.
        """
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        arch = _register_architecture(config.model_name)
        force_quick_gelu = _check_pretrained(arch, config.pretrained)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch,
                pretrained=config.pretrained,
                device=config.device,
                precision=config.precision,
                force_quick_gelu=force_quick_gelu,
            )
        except RuntimeError as e:
            if config.pretrained is None:
                raise
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not open_clip.is_pretrained_cfg(arch, config.pretrained):
                # torch's strict load_state_dict: missing / unexpected keys or mismatched shapes.
                raise ValueError(
                    f"checkpoint {config.pretrained} does not fit architecture {arch!r}: {reason}"
                ) from e
            raise RuntimeError(
                f"could not load open_clip weights {arch}:{config.pretrained} ({reason}); on a machine "
                "without a model hub set vision.pretrained to a local checkpoint path"
            ) from e
        return cls(
            model,
            preprocess,
            feature_layer=config.feature_layer,
            drop_cls=config.drop_cls,
            has_weights=config.pretrained is not None,
            image_limits=config.image_limits,
        )

    @property
    def num_tokens(self) -> int:
        """Tokens per image in `patch_features`: the patches, plus the class token unless dropped."""
        return self.num_patches + (0 if self._drop_cls else NUM_PREFIX_TOKENS)

    def decode(self, data: bytes, *, param: str | None = None) -> Image.Image:
        """Client bytes -> RGB image under this runtime's limits; `MediaError` on bad input."""
        return decode_image(data, self.image_limits, param=param)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images -> pixels `[B, 3, H, W]` float32 on the CPU (open_clip's eval transform)."""
        if not images:
            raise ValueError("preprocess needs at least one image")
        return torch.stack([self._preprocess(_bound_aspect(image, MAX_PREPROCESS_ASPECT)) for image in images])

    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels `[B, 3, H, W]` -> patch features `[B, num_tokens, width]` from `feature_layer`."""
        return self._forward(pixels)[0]

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels `[B, 3, H, W]` -> the L2-normalised CLIP image embedding `[B, embed_dim]`."""
        pixels = self._to_model(pixels)
        with torch.no_grad():
            return self._pooled(pixels)

    def encode_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded images -> (patches `[B, num_tokens, width]`, pooled `[B, embed_dim]`), one forward pass."""
        return self._forward(self.preprocess(images))

    def encode(self, image_bytes: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded images (one request's) -> (patches `[B, num_tokens, width]`, pooled `[B, embed_dim]`).

        Any bad image fails the call with `MediaError` naming its index. A batch that mixes requests
        should `decode` per item, so one client's bad image fails only that client, then call
        `encode_images` on the rest.
        """
        images = []
        for index, data in enumerate(image_bytes):
            try:
                images.append(self.decode(data))
            except MediaError as e:
                raise MediaError(f"image {index}: {e.message}", param=e.param, code=e.code) from e
        return self.encode_images(images)

    def _to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        assert pixels.ndim == 4 and pixels.shape[1] == 3, f"pixels must be [B, 3, H, W], got {tuple(pixels.shape)}"
        weight = self._visual.conv1.weight
        return pixels.to(device=weight.device, dtype=weight.dtype)

    def _pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self._visual(pixels)
        if isinstance(out, tuple):  # towers built with output_tokens=True return (pooled, tokens)
            out = out[0]
        return F.normalize(out, dim=-1)

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self._to_model(pixels)
        capture = self._capture
        capture.active, capture.hidden = True, None
        try:
            # no_grad, not inference_mode: inference tensors cannot later feed a projector being trained.
            with torch.no_grad():
                pooled = self._pooled(pixels)
            hidden = capture.hidden
        finally:
            capture.active, capture.hidden = False, None
        assert hidden is not None, "feature-layer hook did not fire"
        if not self._batch_first:
            hidden = hidden.transpose(0, 1)  # [L, B, D] -> [B, L, D]
        if self._drop_cls:
            hidden = hidden[:, NUM_PREFIX_TOKENS:]
        assert hidden.shape[1] == self.num_tokens, f"expected {self.num_tokens} tokens, got {hidden.shape[1]}"
        return hidden, pooled


def _bound_aspect(image: Image.Image, max_ratio: int) -> Image.Image:
    """`image` centre-cropped along its long side to at most `max_ratio`:1 (unchanged if within)."""
    width, height = image.size
    if width > height * max_ratio:
        keep = height * max_ratio
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    if height > width * max_ratio:
        keep = width * max_ratio
        top = (height - keep) // 2
        return image.crop((0, top, width, top + keep))
    return image


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(_CHECKPOINT_SUFFIXES) or os.path.exists(value)


def _register_architecture(model_name: str) -> str:
    """The open_clip architecture name for `model_name`, registering a model-config JSON if given one."""
    if not model_name.endswith(".json"):
        if open_clip.get_model_config(model_name) is None:
            known = ", ".join(open_clip.list_models())
            raise ValueError(f"unknown open_clip architecture {model_name!r}; known: {known}")
        return model_name
    path = Path(model_name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model config JSON not found: {path}")
    wanted = json.loads(path.read_text())
    arch = path.stem
    registered = open_clip.get_model_config(arch)
    if registered is None:
        # open_clip's registry is keyed by file stem and is process-global; registering is idempotent.
        open_clip.add_model_config(path)
        registered = open_clip.get_model_config(arch)
        if registered is None:
            raise ValueError(f"{path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    if registered != wanted:
        raise ValueError(f"model config {path} clashes with an already registered open_clip architecture {arch!r}")
    return arch


def _check_pretrained(arch: str, pretrained: str | None) -> bool:
    """Validate `pretrained` before open_clip sees it (no download for a typo); return force_quick_gelu.

    open_clip only warns when a tag was trained with QuickGELU (OpenAI's weights) but the architecture
    config uses GELU, and the model then computes wrong features; we force the tag's activation.
    """
    if pretrained is None:
        return False
    # Same precedence as open_clip: a known tag wins over a file of the same name.
    if open_clip.is_pretrained_cfg(arch, pretrained):
        return bool(open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu", False))
    if os.path.isfile(pretrained):
        return False
    if _looks_like_path(pretrained):
        raise FileNotFoundError(f"CLIP checkpoint is not a file: {pretrained}")
    known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
    raise ValueError(
        f"unknown open_clip pretrained tag {pretrained!r} for {arch!r} (known tags: {known}); "
        "or give a local checkpoint path"
    )
