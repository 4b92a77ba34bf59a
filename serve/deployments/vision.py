"""The vision encoder deployment (CLIP): decode + patch features, one forward pass per batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fusion.registry import IMAGE
from modalities.errors import MediaError
from modalities.feature_cache import media_key
from modalities.vision.clip import ClipRuntime
from serve.config import ChorusConfig

from .common import BatchedEncoder, cache_info, feature_cache, with_threads
from .contracts import EncodedItem


class VisionEncoder(BatchedEncoder):
    """CLIP: decode + patch features, one forward pass per batch, repeated images from the cache."""

    kind = IMAGE.kind

    def __init__(self, config: dict[str, Any], runtime_factory: Callable[..., ClipRuntime] | None = None):
        self.config = ChorusConfig.model_validate(config)
        assert self.config.vision is not None, "VisionEncoder built without a vision config"
        factory = runtime_factory or ClipRuntime.from_config
        self.runtime = factory(with_threads(self.config.vision))
        self.cache = feature_cache(self.config.vision.feature_cache_mib)

    def _run(self, images: list[bytes]) -> list[np.ndarray | MediaError]:
        """Model work for one batch (runs in a worker thread): per-image decode, one forward."""
        results: list[np.ndarray | MediaError | None] = [None] * len(images)
        decoded: dict[int, Any] = {}
        for i, data in enumerate(images):
            cached = self.cache.get(media_key(data))
            if cached is not None:
                results[i] = cached
                continue
            try:
                decoded[i] = self.runtime.decode(data)
            except MediaError as err:
                results[i] = err
        if decoded:
            patches, _pooled = self.runtime.encode_images(list(decoded.values()))
            for i, features in zip(decoded, patches):
                array = features.to(device="cpu", dtype=torch.float16).numpy()
                results[i] = array
                self.cache.put(media_key(images[i]), array)
        return results  # type: ignore[return-value]

    async def encode(self, data: bytes) -> np.ndarray:
        return await self._submit(data)

    async def encode_item(self, data: bytes, want_features: bool = True, want_text: bool = False) -> EncodedItem:
        """The chat path's call (every encoder has it): CLIP reads no text, so only features."""
        return EncodedItem(await self.encode(data) if want_features else None, None)

    def info(self) -> dict[str, Any]:
        vision = self.config.vision
        assert vision is not None
        return {
            "status": "ok",
            "model": vision.model_name,
            "pretrained": vision.pretrained,
            "has_weights": self.runtime.has_weights,
            "feature_layer": vision.feature_layer,
            "cache": cache_info(self.cache),
        }
