"""The vision encoder deployment: OCR of images and PDF documents, and CLIP patch features.

OCR (RapidOCR, on by default) reads the text of a photo for the `ocr` and `both` fusion modes and
the text of a PDF (its text layer; scanned pages rendered and OCR'd). CLIP (where `vision` is
configured) gives patch features for `embed` and `both`, one forward pass per batch. Both results
are cached per replica by the image's SHA-256, so a re-sent photo is neither read nor encoded again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from fusion.registry import DOCUMENT, IMAGE
from modalities.errors import MediaError
from modalities.feature_cache import media_key
from modalities.vision.clip import ClipRuntime
from modalities.vision.ocr import OcrResult, OcrRuntime
from serve import metrics
from serve.config import ChorusConfig

from .common import BatchedEncoder, cache_info, feature_cache, with_threads
from .contracts import EncodedItem

TRUNCATION_NOTE = "[… {more} more characters of text not shown]"
DOCUMENT_CUT_NOTE = "[… the rest of the document is not shown: its text is over {limit} characters]"


def capped_text(text: str, max_chars: int) -> tuple[str, bool]:
    """`text` cut to `max_chars` at a line end where one is near, with a note saying how much was
    left out; (text, whether it was cut)."""
    if len(text) <= max_chars:
        return text, False
    cut = text.rfind("\n", max(0, max_chars - 200), max_chars)
    cut = cut if cut > 0 else max_chars
    return text[:cut].rstrip() + "\n" + TRUNCATION_NOTE.format(more=len(text) - cut), True


def ocr_detail(result: OcrResult, text: str, truncated: bool, cached: bool) -> dict[str, Any]:
    return {
        "text": text,
        "lines": [line.to_dict() for line in result.lines],
        "width": result.width,
        "height": result.height,
        "truncated": truncated,
        "cached": cached,
        "ocr_ms": 0.0 if cached else round(result.seconds * 1000, 1),
    }


class VisionEncoder(BatchedEncoder):
    """OCR and/or CLIP. CLIP batches requests into one forward pass; OCR and documents run one at a
    time on a thread of their own (ONNX Runtime uses the replica's threads within one read)."""

    kind = IMAGE.kind

    def __init__(
        self,
        config: dict[str, Any],
        runtime_factory: Callable[..., ClipRuntime] | None = None,
        ocr_factory: Callable[..., OcrRuntime] | None = None,
    ):
        self.config = ChorusConfig.model_validate(config)
        vision, ocr = self.config.vision, self.config.ocr
        assert vision is not None or ocr is not None, "VisionEncoder built with neither CLIP nor OCR configured"
        self.runtime = (runtime_factory or ClipRuntime.from_config)(with_threads(vision)) if vision else None
        self.cache = feature_cache(vision.feature_cache_mib if vision else 0)
        self.ocr = (ocr_factory or OcrRuntime.from_config)(with_threads(ocr)) if ocr else None
        self.ocr_cache = feature_cache(ocr.cache_mib if ocr else 0)
        self._ocr_thread = ThreadPoolExecutor(1, thread_name_prefix="ocr")
        # Documents wait on their worker process (up to documents.timeout_s): a thread of their own,
        # so a slow PDF does not hold up photos (their OCR still takes turns on the one runtime).
        self._document_thread = ThreadPoolExecutor(1, thread_name_prefix="pdf")

    # --- CLIP ---------------------------------------------------------------------------------------

    def _run(self, images: list[bytes]) -> list[np.ndarray | MediaError]:
        """Model work for one batch (runs in a worker thread): per-image decode, one forward."""
        assert self.runtime is not None
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
        if self.runtime is None:
            raise MediaError("this deployment has no CLIP encoder: images are read by OCR only", code="vision_not_configured")
        return await self._submit(data)

    # --- OCR ----------------------------------------------------------------------------------------

    async def _off_loop(self, fn: Callable[..., Any], *args: Any, executor: ThreadPoolExecutor | None = None) -> Any:
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor or self._ocr_thread, fn, *args)
        finally:
            metrics.ENCODER_LATENCY.observe(time.perf_counter() - started, tags={"encoder": "ocr"})

    async def read_image(self, data: bytes) -> dict[str, Any]:
        """The text of an image (the prompt's, capped) and its lines, boxes and confidences."""
        if self.ocr is None:
            raise MediaError("this deployment has no OCR configured", code="ocr_not_configured")
        key = media_key(data, "ocr")
        cached = self.ocr_cache.get(key)
        result: OcrResult = cached if cached is not None else await self._off_loop(self.ocr.read, data)
        if cached is None:
            self.ocr_cache.put(key, result)
        text, truncated = capped_text(result.text, self.ocr.config.max_chars)
        return ocr_detail(result, text, truncated, cached is not None)

    async def read_document(self, data: bytes) -> dict[str, Any]:
        """A PDF's text: text pages read directly, scanned pages rendered and OCR'd (in a sandbox)."""
        if self.ocr is None:
            raise MediaError("this deployment has no OCR configured: documents are not read", code="ocr_not_configured")
        from modalities.vision.pdf import read_pdf

        key = media_key(data, "document")
        detail = self.ocr_cache.get(key)
        if detail is None:
            limits = self.ocr.config.documents
            document = await self._off_loop(
                lambda: read_pdf(data, limits, self._ocr_within(limits.timeout_s)), executor=self._document_thread
            )
            text = document.text
            if document.truncated:
                text += "\n" + DOCUMENT_CUT_NOTE.format(limit=limits.max_chars)
            detail = {
                "text": text,
                "page_count": document.page_count,
                "truncated": document.truncated,
                "pages": [
                    {
                        "number": page.number,
                        "source": page.source,
                        "text": page.text,
                        "lines": [line.to_dict() for line in page.lines],
                    }
                    for page in document.pages
                ],
                "read_ms": round(document.seconds * 1000, 1),
            }
            self.ocr_cache.put(key, detail)
            return {**detail, "cached": False}
        return {**detail, "cached": True}

    def _ocr_within(self, budget_s: float) -> Callable[[np.ndarray], OcrResult]:
        """OCR for a document's scanned pages, all of them within `budget_s` (the PDF worker's own
        limit covers parsing and rendering; this one the reading): past it, the document is refused."""
        assert self.ocr is not None
        ocr, deadline = self.ocr, time.monotonic() + budget_s

        def read(rgb: np.ndarray) -> OcrResult:
            if time.monotonic() > deadline:
                raise MediaError(
                    f"the PDF's scanned pages could not be read within {budget_s:g} s", code="document_too_complex"
                )
            return ocr.read_array(rgb)

        return read

    # --- the chat path ------------------------------------------------------------------------------

    async def encode_item(
        self, data: bytes, want_features: bool = True, want_text: bool = False, kind: str = IMAGE.kind
    ) -> EncodedItem:
        """The chat path's call (every encoder has it): CLIP features and/or the text OCR reads."""
        if kind == DOCUMENT.kind:
            detail = await self.read_document(data)
            return EncodedItem(None, detail["text"], detail)
        if want_features and want_text:
            features, detail = await asyncio.gather(self.encode(data), self.read_image(data))
            return EncodedItem(features, detail["text"], detail)
        if want_text:
            detail = await self.read_image(data)
            return EncodedItem(None, detail["text"], detail)
        return EncodedItem(await self.encode(data) if want_features else None, None)

    def __del__(self) -> None:
        import sys

        pdf = sys.modules.get("modalities.vision.pdf")
        if pdf is not None:  # the PDF worker process goes with the replica
            pdf.shutdown_worker()

    def info(self) -> dict[str, Any]:
        vision, ocr = self.config.vision, self.config.ocr
        out: dict[str, Any] = {"status": "ok", "clip": vision is not None, "ocr": None}
        if vision is not None and self.runtime is not None:
            out.update(
                model=vision.model_name,
                pretrained=vision.pretrained,
                has_weights=self.runtime.has_weights,
                feature_layer=vision.feature_layer,
                cache=cache_info(self.cache),
            )
        if ocr is not None:
            out["ocr"] = {"engine": "rapidocr-onnxruntime (PP-OCRv4)", "cache": cache_info(self.ocr_cache)}
        return out
