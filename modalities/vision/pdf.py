"""Client PDFs, read safely: text pages from the text layer, scanned pages rendered and OCR'd.

`read_pdf(data, limits, ocr)` returns the text of each page. A page whose text layer has fewer
than `limits.min_text_chars` characters is treated as scanned: it is rendered at
`limits.render_dpi` (lower where the page would exceed `limits.max_page_pixels`) and the RGB
image goes to the `ocr` callable (e.g. `OcrRuntime.read_array`). With `ocr=None` scanned pages are
kept with empty text and `source="ocr"` (no lines).

PDFs are hostile input. The cheap checks (size, header) run here; everything PDFium does runs in a
separate, long-lived worker process (PDFium via `pypdfium2`) under an address-space limit
(`RLIMIT_AS` = `limits.memory_mib`, no core dumps) and a wall-clock limit (`limits.timeout_s`, for
all of a document's time in the worker together; the OCR, which runs here on bounded bitmaps, is
not counted). A decompression bomb makes PDFium's allocator fail and abort the worker; a parser
loop is stopped by the timeout, which kills the worker. Either way the client gets a `MediaError`
(code `document_too_complex`) and the next document gets a fresh worker. PDFium does not run PDF
JavaScript: the pypdfium2 wheel is built without V8 and XFA (`pypdfium2.PDFIUM_INFO` has no flags),
and nothing here initialises forms, so /OpenAction and /AA scripts are inert data.

Every client fault is a `MediaError` whose message never echoes the input; codes:
`empty_document`, `document_too_large`, `unsupported_document_format` (no `%PDF-` header in the
first 1024 bytes), `invalid_document` (PDFium cannot parse it; no pages), `document_encrypted`
(needs a password; a PDF encrypted with an empty user password opens, as in viewers),
`document_too_many_pages` (checked before any page is read) and `document_too_complex`. Anything
else escaping is our bug.

One worker serves the process: a document's calls into it hold a lock (so a timeout kills only the
document that caused it, and is not charged for time spent queueing). The worker sends back plain
data: page texts, sizes, and rendered pages as raw pixel buffers (numpy arrays are made here: the
worker never imports numpy, whose BLAS reserves 100+ MB of address space at import). Rendered
pages travel in batches of at most `memory_mib / 8` MiB, so a document of large scanned pages does
not need all of them in the worker's memory at once. Text beyond `limits.max_chars` (counted over
the pages' texts, not the `--- page N ---` headers) is cut, later pages are not read, and the
result says `truncated`.

This module imports no PDF library at import time (the light HTTP ingress may import it);
`pypdfium2` is imported in the worker only.
"""

from __future__ import annotations

import math
import multiprocessing
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from modalities.errors import MediaError

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from modalities.vision.config import DocumentLimits
    from modalities.vision.ocr import OcrLine, OcrResult

__all__ = ["PdfDocument", "PdfPage", "read_pdf", "shutdown_worker"]

PDF_MAGIC = b"%PDF-"
MAX_LEADING_JUNK = 1024  # PDF readers (PDFium included) look for the header this far into the file
# Starting the worker (spawn, imports) takes ~1 s; it is not charged to the document, but a worker
# that cannot even start is our fault, not the client's.
STARTUP_TIMEOUT_S = 60.0
TOO_COMPLEX = "the PDF could not be read within the limits (it is too large or too complex to process)"


@dataclass(frozen=True)
class PdfPage:
    """One page of a PDF and its text."""

    number: int  # 1-based
    text: str  # the page's text (text layer, or what OCR read), whitespace tidied
    source: Literal["text", "ocr"]
    lines: tuple[OcrLine, ...]  # OCR'd pages: the OCR lines (boxes in rendered-page pixels); () for text pages
    width: int  # page size in PDF points (rounded)
    height: int


@dataclass(frozen=True)
class PdfDocument:
    """What was read from a PDF: its pages (up to where `max_chars` cut), in order."""

    pages: tuple[PdfPage, ...]
    page_count: int  # pages the PDF has (`pages` may stop earlier when the text was cut)
    truncated: bool  # text beyond limits.max_chars was cut
    seconds: float

    @property
    def text(self) -> str:
        """The pages' texts as `--- page N ---` blocks, separated by blank lines."""
        return "\n\n".join(f"--- page {page.number} ---\n{page.text}" for page in self.pages)


# ---------------------------------------------------------------------------------------------
# text tidying (here and in the worker)

_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f\ufffe\uffff]")  # C0 but \t \n (\r is gone by then), DEL, non-characters
_BLANK_LINES_RE = re.compile(r"\n{3,}")


def tidy_text(text: str) -> str:
    """Line breaks as `\\n`, no control characters but `\\n` and `\\t`, no trailing spaces, at most
    one blank line in a row, no leading or trailing blank space."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_RE.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_LINES_RE.sub("\n\n", text).strip()


# ---------------------------------------------------------------------------------------------
# the worker process (top-level functions: the spawned worker imports this module to find them)


def _init_worker(memory_bytes: int) -> None:
    """Worker initializer: no core dumps (an aborted bomb would write one), then the address-space
    limit. pypdfium2 is imported first, so the limit bounds what parsing documents takes."""
    import resource

    import pypdfium2  # noqa: F401

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        memory_bytes = min(memory_bytes, hard)  # a lower limit set from outside stays
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _ready() -> bool:
    return True


def _render_scale(width: float, height: float, scale: float, max_pixels: int) -> float:
    """`scale`, lowered until the rendered page (PDFium rounds each side up) has ≤ `max_pixels`."""
    for _ in range(64):
        pixels = math.ceil(width * scale) * math.ceil(height * scale)
        if pixels <= max_pixels:
            break
        scale *= 0.999 * math.sqrt(max_pixels / pixels)
    return scale


def _page_text(textpage: Any, max_raw_chars: int) -> str:
    if textpage.count_chars() <= max_raw_chars:
        return textpage.get_text_bounded()
    return textpage.get_text_range(0, max_raw_chars)  # a page with more text than the prompt can take


def _render(page: Any, width: float, height: float, scale: float, max_pixels: int) -> dict[str, Any] | None:
    """The page's pixels as plain data, or None for a page with no area (PDFium already replaces
    degenerate media boxes with US Letter; this is a second guard)."""
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        return None
    scale = _render_scale(width, height, scale, max_pixels)
    bitmap = page.render(scale=scale, rev_byteorder=True)  # opaque white fill: 3-byte RGB
    try:
        return {
            "mode": bitmap.mode,
            "width": bitmap.width,
            "height": bitmap.height,
            "stride": bitmap.stride,
            "pixels": bytearray(bitmap.buffer),  # stride * height bytes (a copy: the bitmap is freed next)
        }
    finally:
        bitmap.close()


def _read_page(pdf: Any, index: int, job: dict[str, Any], text_budget: int) -> dict[str, Any]:
    page = pdf[index]
    try:
        width, height = (size if math.isfinite(size) else 0.0 for size in page.get_size())
        textpage = page.get_textpage()
        try:
            raw = _page_text(textpage, 4 * job["max_chars"] + 65536)
        finally:
            textpage.close()
        text = tidy_text(raw)
        entry: dict[str, Any] = {"index": index, "width": width, "height": height}
        if len(text) >= job["min_text_chars"]:
            return entry | {"text": text[: max(text_budget, 0) + 1]}
        return entry | {"image": _render(page, width, height, job["scale"], job["max_page_pixels"])}
    finally:
        page.close()


def _open_failure(error: Exception) -> str:
    import pypdfium2.raw as pdfium_c

    code = getattr(error, "err_code", None)
    if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY) or re.search(
        r"password|security", str(error), re.IGNORECASE
    ):
        return "document_encrypted"
    return "invalid_document"


def _extract(data: bytes, job: dict[str, Any]) -> dict[str, Any]:
    """In the worker: open the PDF, check its page count, read pages from `job["start"]`.

    Returns `{"error": code, ...}` for a client fault, else the page count, the pages read (text,
    or the rendered image of a scanned page) and `next`: the page to continue from (a batch stops
    once `job["pixel_budget"]` bytes of images are held), or None when done (or when the text
    pages alone hold more than `job["text_budget"]` characters: the rest would be cut)."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as error:
        return {"error": _open_failure(error)}
    try:
        page_count = len(pdf)
        if page_count > job["max_pages"]:
            return {"error": "document_too_many_pages", "page_count": page_count}
        pages: list[dict[str, Any]] = []
        held = text_chars = 0
        index = job["start"]
        while index < page_count:
            if held > job["pixel_budget"] or text_chars > job["text_budget"]:
                break
            entry = _read_page(pdf, index, job, job["text_budget"] - text_chars)
            text_chars += len(entry.get("text", ""))
            held += len((entry.get("image") or {}).get("pixels", b""))
            pages.append(entry)
            index += 1
        more = index < page_count and text_chars <= job["text_budget"]
        return {"page_count": page_count, "pages": pages, "next": index if more else None}
    except pdfium.PdfiumError:
        return {"error": "invalid_document"}  # a page, its text or its rendering failed
    except MemoryError:
        return {"error": "document_too_complex"}
    finally:
        pdf.close()


# ---------------------------------------------------------------------------------------------
# the pool (one worker, kept between documents)

_LOCK = threading.Lock()
_POOL: ProcessPoolExecutor | None = None
_POOL_MEMORY_MIB: int | None = None


KILL_REAP_TIMEOUT_S = 60.0  # a SIGKILLed worker is always reaped; this only bounds a kernel stall


class _WorkerLost(Exception):
    """The worker died or ran out of time; it has been dropped."""


def _discard_locked(kill: bool) -> None:
    """Drop the pool; with `kill`, end its worker first (a timed-out worker may never return).
    `ProcessPoolExecutor` has no public way to stop a running task: its `_processes` (pid →
    `multiprocessing.Process`) is the handle, stable since Python 3.2."""
    global _POOL, _POOL_MEMORY_MIB
    pool, _POOL, _POOL_MEMORY_MIB = _POOL, None, None
    if pool is None:
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)  # `shutdown` forgets it
    if kill:
        for process in processes:
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    if kill:
        # Killed and reaped before we go on. Two threads reap the worker: the pool's manager thread
        # (it sees the worker die, fails its futures, joins every worker, then exits) and our join.
        # The one whose waitpid loses gets ECHILD, and `Process` then reads as alive until the winner
        # stores the exit code — so the manager thread is waited for first (then our join finds the
        # code stored). A worker killed while inflating gigabytes takes seconds to free them on a
        # loaded machine; the timeout only bounds a kernel stall.
        deadline = time.monotonic() + KILL_REAP_TIMEOUT_S
        if manager is not None:
            manager.join(KILL_REAP_TIMEOUT_S)
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))


def _usable(pool: ProcessPoolExecutor) -> bool:
    """Whether the idle pool's worker is still there (something outside, e.g. the OOM killer, may
    have ended it since the last document: that must not be blamed on the next one)."""
    processes = (getattr(pool, "_processes", None) or {}).values()
    return not getattr(pool, "_broken", False) and all(process.is_alive() for process in processes)


def _pool_locked(memory_mib: int) -> ProcessPoolExecutor:
    global _POOL, _POOL_MEMORY_MIB
    if _POOL is not None and (_POOL_MEMORY_MIB != memory_mib or not _usable(_POOL)):
        _discard_locked(kill=True)  # gone, or another limit (the worker must be started with it)
    if _POOL is None:
        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(memory_mib * 1024 * 1024,),
        )
        _POOL, _POOL_MEMORY_MIB = pool, memory_mib
        try:
            pool.submit(_ready).result(timeout=STARTUP_TIMEOUT_S)
        except (FutureTimeoutError, BrokenProcessPool) as error:
            _discard_locked(kill=True)
            raise RuntimeError(
                "the PDF worker process failed to start (or took over "
                f"{STARTUP_TIMEOUT_S:.0f} s); with the spawn start method the main module must be import-safe "
                "(an `if __name__ == '__main__':` guard)"
            ) from error
    return _POOL


def _in_worker(data: bytes, job: dict[str, Any], memory_mib: int, timeout_s: float) -> tuple[dict[str, Any], float]:
    """`_extract(data, job)` in the worker, and the seconds it took; `_WorkerLost` when the worker
    died (a memory limit, a PDFium crash) or took longer than `timeout_s` (it is then killed)."""
    with _LOCK:
        pool = _pool_locked(memory_mib)
        started = time.monotonic()
        try:
            future = pool.submit(_extract, data, job)
            return future.result(timeout=timeout_s), time.monotonic() - started
        except FutureTimeoutError:
            _discard_locked(kill=True)
            raise _WorkerLost from None
        except BrokenProcessPool:
            _discard_locked(kill=True)
            raise _WorkerLost from None
        except MemoryError:  # the result was too large to send back
            raise _WorkerLost from None


def shutdown_worker() -> None:
    """End the worker process, if one is running (a later `read_pdf` starts a new one)."""
    with _LOCK:
        _discard_locked(kill=True)


# ---------------------------------------------------------------------------------------------
# the caller's side


def _check_bytes(data: bytes, limits: DocumentLimits, param: str | None) -> None:
    if not data:
        raise MediaError("the PDF is empty", param=param, code="empty_document")
    if len(data) > limits.max_bytes:
        raise MediaError(
            f"the PDF is {len(data)} bytes; the limit is {limits.max_bytes}", param=param, code="document_too_large"
        )
    if data.find(PDF_MAGIC, 0, MAX_LEADING_JUNK + len(PDF_MAGIC)) < 0:
        raise MediaError(
            "not a PDF (no %PDF- header); send a PDF document", param=param, code="unsupported_document_format"
        )


_ERRORS = {
    "document_encrypted": "the PDF is password-protected; send it without a password",
    "invalid_document": "the PDF is damaged or not a readable PDF",
    "document_too_complex": TOO_COMPLEX,
}


def _raise_for(result: dict[str, Any], limits: DocumentLimits, param: str | None) -> None:
    code = result["error"]
    if code == "document_too_many_pages":
        message = f"the PDF has {result['page_count']} pages; the limit is {limits.max_pages}"
    else:
        message = _ERRORS[code]
    raise MediaError(message, param=param, code=code)


def _rgb(image: dict[str, Any]) -> np.ndarray:
    """The worker's pixel buffer as an RGB uint8 array [H, W, 3] (whatever PDFium's format)."""
    import numpy as np

    mode, width, height = image["mode"], image["width"], image["height"]
    channels = len(mode)
    rows = np.frombuffer(image["pixels"], np.uint8).reshape(height, image["stride"])
    pixels = rows[:, : width * channels].reshape(height, width, channels)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    order = [mode.upper().index(c) for c in "RGB"]  # RGB, BGR, RGBA/RGBX, BGRA/BGRX/BGRa
    if order == [0, 1, 2] and channels == 3 and pixels.flags.writeable and pixels.flags.c_contiguous:
        return pixels
    return np.ascontiguousarray(pixels[:, :, order])


def _page(entry: dict[str, Any], ocr: Callable[[np.ndarray], OcrResult] | None) -> PdfPage:
    number, width, height = entry["index"] + 1, round(entry["width"]), round(entry["height"])
    if "text" in entry:
        return PdfPage(number, entry["text"], "text", (), width, height)
    if ocr is None or entry["image"] is None:
        return PdfPage(number, "", "ocr", (), width, height)
    result = ocr(_rgb(entry["image"]))
    return PdfPage(number, tidy_text(result.text), "ocr", tuple(result.lines), width, height)


def read_pdf(
    data: bytes,
    limits: DocumentLimits,
    ocr: Callable[[np.ndarray], OcrResult] | None,
    *,
    param: str | None = None,
) -> PdfDocument:
    """Read a client PDF's text within `limits`; scanned pages go through `ocr` (RGB uint8 [H, W, 3]).

    Raises `MediaError` for anything wrong with the PDF (see the module docstring for the codes)."""
    started = time.perf_counter()
    _check_bytes(data, limits, param)
    job: dict[str, Any] = {
        "max_pages": limits.max_pages,
        "max_chars": limits.max_chars,
        "min_text_chars": limits.min_text_chars,
        "scale": limits.render_dpi / 72,
        "max_page_pixels": limits.max_page_pixels,
        "pixel_budget": limits.memory_mib * 1024 * 1024 // 8,
        "start": 0,
    }
    pages: list[PdfPage] = []
    chars, worker_s, truncated = 0, 0.0, False
    while True:
        job["text_budget"] = limits.max_chars - chars
        try:
            if worker_s >= limits.timeout_s:
                raise _WorkerLost
            result, seconds = _in_worker(data, job, limits.memory_mib, limits.timeout_s - worker_s)
        except _WorkerLost:
            raise MediaError(TOO_COMPLEX, param=param, code="document_too_complex") from None
        worker_s += seconds
        if "error" in result:
            _raise_for(result, limits, param)
        if result["page_count"] == 0:
            raise MediaError("the PDF has no pages", param=param, code="invalid_document")
        for entry in result["pages"]:
            if chars >= limits.max_chars and (entry.get("text") or entry.get("image")):
                truncated = True  # more text (or a page OCR might read) than the prompt takes
                break
            page = _page(entry, ocr)
            if chars + len(page.text) > limits.max_chars:
                page = PdfPage(page.number, page.text[: limits.max_chars - chars].rstrip(), page.source, page.lines, page.width, page.height)
                truncated = True
            chars += len(page.text)
            pages.append(page)
            if truncated:
                break
        if truncated or result["next"] is None:
            break
        job["start"] = result["next"]
    return PdfDocument(tuple(pages), result["page_count"], truncated, time.perf_counter() - started)
