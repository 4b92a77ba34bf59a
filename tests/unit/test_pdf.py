"""Client PDFs (`modalities.vision.pdf`): text pages, scanned pages through OCR, and hostile PDFs
(encrypted, JavaScript, huge page trees, deep nesting, a flate bomb, corruption) that must end in
a `MediaError` or a normal result, in bounded time, with the worker process still usable after."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import modalities.vision.pdf as pdf_module
from modalities.errors import MediaError
from modalities.vision.config import DocumentLimits
from modalities.vision.ocr import OcrLine, OcrResult
from modalities.vision.pdf import PdfDocument, PdfPage, read_pdf, shutdown_worker, tidy_text
from tests import pdfs

LIMITS = DocumentLimits()
DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
# What a hostile PDF may end in: an error for the client, never a hang or a crash.
CLIENT_CODES = {"document_too_complex", "invalid_document", "document_too_many_pages", "document_encrypted"}
INVOICE = [
    ["ACME Supplies Ltd", "Invoice 2024-0117", "Bill to: Example Corp"],
    ["Item  Qty  Price", "Paper A4  10  45.00", "Toner  2  589.78"],
    ["Subtotal 1,079.56", "VAT 155.00", "TOTAL DUE 1,234.56"],
]


@pytest.fixture(scope="module", autouse=True)
def _worker():
    yield
    shutdown_worker()


class FakeOcr:
    """Records the arrays it is given and "reads" one fixed line per call."""

    def __init__(self, text: str = "scanned  words\r\n\x00here  ") -> None:
        self.text = text
        self.arrays: list[np.ndarray] = []

    def __call__(self, rgb: np.ndarray) -> OcrResult:
        self.arrays.append(rgb)
        height, width = rgb.shape[:2]
        box = ((1.0, 2.0), (width - 1.0, 2.0), (width - 1.0, 20.0), (1.0, 20.0))
        return OcrResult((OcrLine(self.text, box, 0.9),), width, height)


def read(data: bytes, limits: DocumentLimits = LIMITS, ocr=None, **kwargs) -> PdfDocument:
    return read_pdf(data, limits, ocr, **kwargs)


def error_of(data: bytes, limits: DocumentLimits = LIMITS, ocr=None) -> MediaError:
    with pytest.raises(MediaError) as caught:
        read(data, limits, ocr, param="messages[0].content[1]")
    assert caught.value.param == "messages[0].content[1]"
    return caught.value


def worker_process():
    """The pool's one worker process (it exists after a first read)."""
    (process,) = pdf_module._POOL._processes.values()
    return process


def three_colour_image(width: int = 600, height: int = 300) -> Image.Image:
    """Left third red, middle green, right blue: shows whether channels come back in RGB order."""
    pixels = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    pixels[:, :third, 0] = 255
    pixels[:, third : 2 * third, 1] = 255
    pixels[:, 2 * third :, 2] = 255
    return Image.fromarray(pixels)


# ---------------------------------------------------------------------------------------------
# text pages


def test_text_pages_are_read_in_order():
    document = read(pdfs.text_pdf([["First page, first line", "second line"], ["Page two says hello"], ["And finally page three"]]))
    assert document.page_count == 3 and not document.truncated
    assert [page.number for page in document.pages] == [1, 2, 3]
    assert all(page.source == "text" and page.lines == () for page in document.pages)
    assert document.pages[0].text == "First page, first line\nsecond line"
    assert document.pages[1].text == "Page two says hello"
    assert (document.pages[0].width, document.pages[0].height) == (595, 842)  # A4 in points
    assert document.text == (
        "--- page 1 ---\nFirst page, first line\nsecond line\n\n--- page 2 ---\nPage two says hello\n\n"
        "--- page 3 ---\nAnd finally page three"
    )
    assert 0 < document.seconds < 30


def test_invoice_total_is_on_page_three():
    document = read(pdfs.text_pdf(INVOICE))
    assert "TOTAL DUE 1,234.56" in document.pages[2].text
    assert all("1,234.56" not in page.text for page in document.pages[:2])


def test_text_beyond_max_chars_is_cut():
    pages = [[f"page {n} line {i} " + "x" * 40 for i in range(5)] for n in range(1, 4)]
    full = read(pdfs.text_pdf(pages))
    first_page_chars = len(full.pages[0].text)
    limits = DocumentLimits(max_chars=first_page_chars + 30)
    document = read(pdfs.text_pdf(pages), limits)
    assert document.truncated and document.page_count == 3
    assert [page.number for page in document.pages] == [1, 2]  # page 3 is not read
    assert document.pages[0].text == full.pages[0].text
    assert full.pages[1].text.startswith(document.pages[1].text)
    assert sum(len(page.text) for page in document.pages) <= limits.max_chars
    exact = read(pdfs.text_pdf(pages), DocumentLimits(max_chars=sum(len(p.text) for p in full.pages)))
    assert not exact.truncated and exact.pages == full.pages


def test_text_is_tidied():
    assert tidy_text("a  \r\nb\rc\x00d\x07\te\x0c\n\n\n\n\nf   \n") == "a\nb\ncd\te\n\nf"
    assert tidy_text("  \n\n x\ufffe\x7f \n") == "x"


def test_javascript_pdf_is_read_as_text_and_nothing_runs():
    document = read(pdfs.javascript_pdf(["Quarterly results attached.", "Revenue grew 12 percent."]))
    assert document.pages[0].source == "text"
    assert document.pages[0].text == "Quarterly results attached.\nRevenue grew 12 percent."


# ---------------------------------------------------------------------------------------------
# scanned pages


def test_scanned_page_is_rendered_in_rgb_and_ocrd():
    ocr = FakeOcr()
    document = read(pdfs.scanned_pdf(three_colour_image(600, 300)), ocr=ocr)
    (rgb,) = ocr.arrays
    # 600 x 300 px at 150 dpi is a 288 x 144 pt page; rendered back at 150 dpi it is 600 x 300 again.
    assert rgb.shape == (300, 600, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert rgb[150, 100].tolist() == [255, 0, 0]
    assert rgb[150, 300].tolist() == [0, 255, 0]
    assert rgb[150, 500].tolist() == [0, 0, 255]
    (page,) = document.pages
    assert (page.source, page.width, page.height) == ("ocr", 288, 144)
    assert page.text == "scanned  words\nhere"
    assert page.lines == (OcrLine(ocr.text, ((1.0, 2.0), (599.0, 2.0), (599.0, 20.0), (1.0, 20.0)), 0.9),)


def test_scanned_page_is_rendered_smaller_when_over_max_page_pixels():
    ocr = FakeOcr()
    read(pdfs.scanned_pdf(three_colour_image(600, 300)), DocumentLimits(max_page_pixels=20_000), ocr)
    (rgb,) = ocr.arrays
    height, width = rgb.shape[:2]
    assert height * width <= 20_000
    assert abs(width / height - 2) < 0.05


def test_huge_page_renders_within_the_pixel_limit():
    big = pdfs.raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] >>",
    ])
    ocr = FakeOcr()
    document = read(big, DocumentLimits(max_page_pixels=250_000), ocr)
    assert ocr.arrays[0].shape[0] * ocr.arrays[0].shape[1] <= 250_000
    assert (document.pages[0].width, document.pages[0].height) == (14400, 14400)


def test_render_scale_respects_the_pixel_limit_for_extreme_shapes():
    for width, height in [(14400, 14400), (14400, 1), (1, 14400), (0.5, 0.5), (612, 792)]:
        scale = pdf_module._render_scale(width, height, 150 / 72, 10_000)
        assert np.ceil(width * scale) * np.ceil(height * scale) <= 10_000
    assert pdf_module._render_scale(612, 792, 150 / 72, 8_000_000) == 150 / 72


@pytest.mark.parametrize("mode", ["RGB", "BGR", "RGBA", "BGRA", "BGRX", "L"])
def test_worker_pixels_become_rgb_whatever_the_bitmap_mode(mode):
    rgb = np.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]], np.uint8)
    channels = {"R": rgb[..., 0], "G": rgb[..., 1], "B": rgb[..., 2], "A": np.full((2, 2), 255, np.uint8)}
    channels["X"] = channels["A"]
    if mode == "L":
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
        channels["L"] = rgb[..., 0]
    pixels = np.stack([channels[c] for c in mode], axis=2)
    padded = np.zeros((2, 2 * len(mode) + 2), np.uint8)  # a stride with padding
    padded[:, : 2 * len(mode)] = pixels.reshape(2, -1)
    image = {"mode": mode, "width": 2, "height": 2, "stride": padded.shape[1], "pixels": bytearray(padded.tobytes())}
    out = pdf_module._rgb(image)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3) and out.flags.c_contiguous
    assert np.array_equal(out, rgb)


def test_page_with_too_little_text_is_treated_as_scanned():
    ocr = FakeOcr("Everything else on the page")
    document = read(pdfs.text_pdf([["p. 3"], ["A page with plenty of text on it"]]), ocr=ocr)
    assert [page.source for page in document.pages] == ["ocr", "text"]
    assert document.pages[0].text == "Everything else on the page"
    assert ocr.arrays[0].shape == (1754, 1241, 3)  # A4 at 150 dpi


def test_scanned_page_without_ocr_is_kept_empty():
    document = read(pdfs.scanned_pdf(three_colour_image(60, 30)), ocr=None)
    (page,) = document.pages
    assert (page.source, page.text, page.lines) == ("ocr", "", ())


def test_real_ocr_reads_the_amount_on_a_scanned_page():
    from modalities.vision.ocr import OcrRuntime

    image = Image.new("RGB", (900, 200), "white")
    ImageDraw.Draw(image).text((40, 70), "TOTAL DUE 1,234.56", fill="black", font=ImageFont.truetype(DEJAVU, 40))
    document = read(pdfs.scanned_pdf(image), ocr=OcrRuntime().read_array)
    (page,) = document.pages
    assert page.source == "ocr"
    assert "1,234.56" in page.text
    assert page.lines and all(0 <= x <= 900 and 0 <= y <= 200 for line in page.lines for x, y in line.box)


# ---------------------------------------------------------------------------------------------
# refused before PDFium


def test_empty_too_large_and_not_a_pdf():
    assert error_of(b"").code == "empty_document"
    data = pdfs.text_pdf([["hello there"]])
    error = error_of(data, DocumentLimits(max_bytes=len(data) - 1))
    assert error.code == "document_too_large" and str(len(data)) in error.message
    secret = b"SECRET-PAYLOAD " * 40
    error = error_of(secret)
    assert error.code == "unsupported_document_format" and "SECRET" not in error.message
    assert error_of(b"x" * 1025 + data).code == "unsupported_document_format"


def test_leading_junk_within_1024_bytes_is_accepted():
    document = read(b"\x00junk" * 200 + pdfs.text_pdf([["Behind some junk bytes"]]))  # 1000 bytes of junk
    assert document.pages[0].text == "Behind some junk bytes"


# ---------------------------------------------------------------------------------------------
# hostile PDFs


def test_encrypted_pdf_is_refused():
    error = error_of(pdfs.encrypted_pdf("secret"))
    assert error.code == "document_encrypted" and "password" in error.message


def test_pdf_encrypted_with_an_empty_user_password_opens():
    document = read(pdfs.encrypted_pdf("", ["Readable without a password"]))
    assert document.pages[0].text == "Readable without a password"


def test_too_many_pages_is_refused_before_any_page_is_read():
    ocr = FakeOcr()  # the empty pages would be rendered and OCR'd if they were read
    started = time.perf_counter()
    error = error_of(pdfs.many_pages_pdf(5000), ocr=ocr)
    assert error.code == "document_too_many_pages"
    assert "5000" in error.message and str(LIMITS.max_pages) in error.message
    assert ocr.arrays == []
    assert time.perf_counter() - started < 10
    assert error_of(pdfs.many_pages_pdf(4), DocumentLimits(max_pages=3), ocr).code == "document_too_many_pages"
    assert read(pdfs.many_pages_pdf(3), DocumentLimits(max_pages=3), ocr).page_count == 3
    assert len(ocr.arrays) == 3


def test_deep_nesting_ends_in_bounded_time_and_the_worker_still_works():
    started = time.perf_counter()
    try:
        document = read(pdfs.deep_nesting_pdf(100_000))
    except MediaError as error:
        assert error.code in CLIENT_CODES
    else:
        assert document.page_count == 1  # PDFium caps its parser's recursion: the rest of the page reads
    assert time.perf_counter() - started < LIMITS.timeout_s + 10
    assert read(pdfs.text_pdf([["Still working after nesting"]])).pages[0].text == "Still working after nesting"


def test_flate_bomb_ends_in_bounded_time_and_the_worker_still_works():
    bomb = pdfs.flate_bomb_pdf()
    assert len(bomb) <= 3 * 1024 * 1024 and pdfs.BOMB_INFLATED_BYTES >= 2 * 1024**3
    started = time.perf_counter()
    try:
        read(bomb, ocr=FakeOcr())
    except MediaError as error:
        assert error.code in CLIENT_CODES
    assert time.perf_counter() - started < LIMITS.timeout_s + 10
    assert read(pdfs.text_pdf([["Still working after the bomb"]])).pages[0].text == "Still working after the bomb"


def test_timeout_kills_the_worker_and_the_next_document_gets_a_fresh_one():
    # With room to inflate, the bomb takes ~10 s of PDFium time; the 1 s limit stops it.
    limits = DocumentLimits(memory_mib=8192, timeout_s=1.0)
    read(pdfs.text_pdf([["warm the worker up"]]), limits)
    process = worker_process()
    started = time.perf_counter()
    error = error_of(pdfs.flate_bomb_pdf(), limits)
    elapsed = time.perf_counter() - started
    assert error.code == "document_too_complex" and "limits" in error.message
    # At least the limit; the upper bound only catches a hang (reaping a killed worker that was
    # inflating gigabytes takes seconds on a loaded machine).
    assert 1.0 <= elapsed < pdf_module.KILL_REAP_TIMEOUT_S
    # Killed by the timeout and reaped before the call returned: its exit status is known. (Not
    # `is_alive()` alone: a worker reaped by the pool's manager thread reads as alive until that
    # thread has stored the status — the read must have waited for it.)
    assert process.exitcode == -signal.SIGKILL, process.exitcode
    assert not process.is_alive()
    assert read(pdfs.text_pdf([["A fresh worker process"]]), limits).pages[0].text == "A fresh worker process"
    assert worker_process().pid != process.pid


def test_corrupt_pdf_is_refused():
    assert error_of(pdfs.corrupt_pdf()).code == "invalid_document"
    truncated = pdfs.text_pdf([["cut short"]])[:60]  # a header and the start of the first object
    assert error_of(truncated).code == "invalid_document"


def test_worker_recovers_after_being_killed():
    read(pdfs.text_pdf([["before the worker is killed"]]))
    process = worker_process()
    process.kill()
    process.join()
    assert read(pdfs.text_pdf([["after the worker was killed"]])).pages[0].text == "after the worker was killed"
    assert worker_process().pid != process.pid


def test_concurrent_reads_share_the_worker():
    results: dict[int, str] = {}

    def work(n: int) -> None:
        results[n] = read(pdfs.text_pdf([[f"document number {n}"]])).pages[0].text

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: f"document number {n}" for n in range(4)}


# ---------------------------------------------------------------------------------------------
# shape of the module


def test_module_imports_without_pdf_or_array_libraries():
    code = "import sys, modalities.vision.pdf; print(','.join(m for m in ('pypdfium2', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_results_are_frozen():
    page = PdfPage(1, "x", "text", (), 10, 10)
    with pytest.raises(AttributeError):
        page.text = "y"  # type: ignore[misc]


def test_test_pdfs_are_deterministic():
    image = three_colour_image(30, 15)
    for build in (
        lambda: pdfs.text_pdf(INVOICE),
        lambda: pdfs.scanned_pdf(image),
        pdfs.encrypted_pdf,
        pdfs.javascript_pdf,
        lambda: pdfs.many_pages_pdf(50),
        lambda: pdfs.deep_nesting_pdf(1000),
        lambda: pdfs.flate_bomb_pdf(4),
        pdfs.corrupt_pdf,
    ):
        assert build() == build()


def test_bomb_stream_inflates_to_what_it_claims():
    import zlib

    assert zlib.decompress(pdfs.bomb_stream(3)) == pdfs._BOMB_CHUNK * 3  # the Adler-32 trailer checks too


def test_scanned_pages_come_back_in_batches_within_the_memory_budget(monkeypatch):
    # 256 MiB → a batch ends once it holds over 32 MiB of pixels; 200 x 200 pt pages at 600 dpi are
    # 8.3 MB each, so the first batch is 5 pages.
    limits = DocumentLimits(memory_mib=256, render_dpi=600)
    calls = []
    in_worker = pdf_module._in_worker

    def counting(data, job, memory_mib, timeout_s):
        calls.append(job["start"])
        return in_worker(data, job, memory_mib, timeout_s)

    monkeypatch.setattr(pdf_module, "_in_worker", counting)
    ocr = FakeOcr()
    document = read(pdfs.many_pages_pdf(7), limits, ocr)
    assert calls == [0, 5]
    assert [page.number for page in document.pages] == list(range(1, 8))
    assert [array.shape for array in ocr.arrays] == [(1667, 1667, 3)] * 7


def test_smallest_memory_limit_still_reads_documents():
    document = read(pdfs.text_pdf(INVOICE), DocumentLimits(memory_mib=128))
    assert "TOTAL DUE 1,234.56" in document.pages[2].text
