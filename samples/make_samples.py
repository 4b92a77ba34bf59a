"""Regenerate the sample media: spoken customer-service requests (hibari neural TTS, voice "heart",
resampled to 16 kHz 16-bit mono WAV), a few pictures drawn with Pillow (a parcel, shapes, and two
phone-photo-like documents that the service reads by OCR: a shipping label and a shop receipt) and a
text invoice PDF (fpdf2).

    .venv/bin/python samples/make_samples.py
    .venv/bin/python samples/check_samples.py   # what the packaged Whisper base hears in each clip

Everything is made from fixed seeds: the same hibari, soxr, Pillow, FreeType, libjpeg and fpdf2 give
the same bytes.
"""

from __future__ import annotations

import functools
import io
import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from modalities.audio.decode import resample
from modalities.speech.espeak import to_wav_bytes

HERE = Path(__file__).resolve().parent
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")

# clip name -> the sentence it speaks. hibari's wheel holds one voice ("heart", American English);
# seed 0 fixes the noise of its vocoder, so a clip comes out the same on every run.
SPOKEN = {
    "where_is_my_order": "Hi, I ordered a blue backpack last week and it has not arrived yet. Where is my order?",
    "refund_request": "I would like a refund for the kettle I bought, it stopped working after two days.",
    "change_appointment": "Can I move my appointment from Monday morning to Wednesday afternoon?",
    "billing_question": "Why was I charged twice on my last bill?",
}
SPEECH_VOICE = "heart"
SPEECH_SEED = 0

# What the documents say (the samples and the README quote these).
ORDER_NUMBER = "AB123456"
TRACKING_NUMBER = "1Z 4F8 72X 03 5521 9087"
RECEIPT_ITEMS = [("COFFEE BEANS 250G", "9.49"), ("OAT MILK 1L", "2.49"), ("CROISSANT 2 @ 2.75", "5.50"),
                 ("BANANAS 1.1 LB", "1.29"), ("DARK CHOCOLATE 85%", "3.31")]
RECEIPT_TOTAL = "$23.85"  # subtotal 22.08 + 8 % tax 1.77
INVOICE_ITEMS = [  # (description, quantity, unit price): 1,372.55 before tax
    ("Consulting (hours)", 6, 95.00), ("Annual support plan", 1, 480.00), ("Wireless keyboard K380", 2, 39.99),
    ("USB-C cable 2 m", 3, 12.50), ("Laptop stand, aluminium", 2, 44.00), ("Webcam 1080p", 1, 64.95),
    ("Toner cartridge black", 1, 52.12),
]
INVOICE_TAX_RATE = 0.08
INVOICE_TOTAL = "$1,482.35"


@functools.cache
def _tts():
    from hibari import Hibari

    return Hibari(voice=SPEECH_VOICE)


def speak(text: str) -> bytes:
    """`text` spoken by hibari (24 kHz float32) as a 16 kHz 16-bit mono WAV, the rate Whisper reads."""
    tts = _tts()
    return to_wav_bytes(resample(tts(text, speed=1.0, seed=SPEECH_SEED), tts.sample_rate))


def draw_parcel(path: Path) -> None:
    img = Image.new("RGB", (320, 240), (235, 235, 230))
    d = ImageDraw.Draw(img)
    d.polygon([(80, 90), (200, 70), (250, 110), (130, 135)], fill=(196, 150, 96))
    d.polygon([(80, 90), (130, 135), (130, 210), (80, 165)], fill=(170, 125, 75))
    d.polygon([(130, 135), (250, 110), (250, 185), (130, 210)], fill=(150, 108, 62))
    d.line([(150, 128), (175, 160), (160, 190)], fill=(60, 40, 20), width=4)  # a tear
    img.save(path)


def draw_shapes(path: Path) -> None:
    img = Image.new("RGB", (224, 224), "white")
    d = ImageDraw.Draw(img)
    d.ellipse((20, 20, 100, 100), fill="red")
    d.rectangle((120, 120, 200, 200), fill="blue")
    img.save(path)


# --- phone-photo-like documents ---------------------------------------------------------------------


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONT_DIR / name
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size)


def _perspective(dst: list[tuple[float, float]], src: list[tuple[float, float]]) -> list[float]:
    """Pillow PERSPECTIVE coefficients mapping output points `dst` to input points `src` (4 each)."""
    rows, rhs = [], []
    for (X, Y), (x, y) in zip(dst, src):
        rows.append([X, Y, 1, 0, 0, 0, -x * X, -x * Y])
        rows.append([0, 0, 0, X, Y, 1, -y * X, -y * Y])
        rhs += [x, y]
    return [float(c) for c in np.linalg.solve(np.array(rows, float), np.array(rhs, float))]


def photograph(doc: Image.Image, size: tuple[int, int], angle_deg: float, seed: int, quality: int = 80) -> bytes:
    """`doc` as a phone would photograph it on a wooden table: rotated by `angle_deg`, a slight keystone,
    a soft shadow, uneven light, a little blur and sensor noise; a JPEG of `size`."""
    rng = np.random.default_rng(seed)
    width, height = size
    # the table: a warm wood-like texture (stretched noise along x plus a colour)
    grain = rng.normal(0, 1, (height // 8 + 1, width // 64 + 1)).astype(np.float32)
    grain = np.asarray(Image.fromarray(grain).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    table = np.stack([150 + 14 * grain, 108 + 11 * grain, 72 + 8 * grain], axis=-1)
    # where the document's corners land: fit it to ~80 % of the frame, rotate, move corners a little
    scale = 0.8 * min(width / doc.width, height / doc.height)
    w, h = doc.width * scale, doc.height * scale
    corners = np.array([(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)])
    corners[:2, 0] *= 0.96  # the top edge a little shorter: the phone tilted back
    corners += rng.uniform(-0.012, 0.012, corners.shape) * min(w, h)
    a = np.radians(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = corners @ rotation.T + (width / 2, height / 2)
    src = [(0, 0), (doc.width, 0), (doc.width, doc.height), (0, doc.height)]
    coeffs = _perspective([tuple(p) for p in dst], src)
    warped = np.asarray(doc.transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC), np.float32)
    mask = Image.new("L", doc.size, 255).transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    alpha = np.asarray(mask, np.float32)[:, :, None] / 255
    shadow = np.asarray(mask.filter(ImageFilter.GaussianBlur(14)).transform(
        size, Image.Transform.AFFINE, (1, 0, -10, 0, 1, -12)), np.float32)[:, :, None] / 255
    out = table * (1 - 0.45 * shadow) * (1 - alpha) + warped * alpha
    # light from the top left, falling off towards the bottom right
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.05 - 0.22 * (xx / width * 0.6 + yy / height * 0.4)
    out = out * light[:, :, None]
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    noisy = np.asarray(img, np.float32) + rng.normal(0, 3.0, (height, width, 1)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _barcode(d: ImageDraw.ImageDraw, seed: int, x0: int, y0: int, x1: int, height: int) -> None:
    """Bars that look like a Code 128 barcode (a graphic, not data)."""
    rng = random.Random(seed)
    x = x0
    while x < x1 - 8:
        bar = rng.choice((2, 2, 4, 6))
        d.rectangle([x, y0, x + bar - 1, y0 + height], fill="black")
        x += bar + rng.choice((2, 2, 4, 6))


def draw_parcel_label(path: Path) -> None:
    """A 4x6-inch shipping label (order number ORDER_NUMBER), photographed slightly askew."""
    label = Image.new("RGB", (800, 1200), (250, 249, 244))
    d = ImageDraw.Draw(label)
    small, body, bold, big = _font("DejaVuSans.ttf", 26), _font("DejaVuSans.ttf", 32), _font("DejaVuSans-Bold.ttf", 34), \
        _font("DejaVuSans-Bold.ttf", 56)
    d.rectangle([12, 12, 787, 1187], outline="black", width=4)
    y = 40
    for line in ("FROM:", "Northwind Supply Co.", "1420 Commerce Dr", "Austin, TX 78701"):
        d.text((40, y), line, font=small, fill="black")
        y += 36
    d.text((760, 40), "2.4 LB", font=small, fill="black", anchor="ra")
    d.text((760, 76), "1 OF 1", font=small, fill="black", anchor="ra")
    d.line([(12, 210), (787, 210)], fill="black", width=4)
    d.text((40, 236), "SHIP TO:", font=bold, fill="black")
    y = 288
    for line in ("MARIA GARCIA", "88 MAPLE AVE APT 4B", "PORTLAND OR 97205"):
        d.text((70, y), line, font=bold, fill="black")
        y += 48
    d.line([(12, 450), (787, 450)], fill="black", width=4)
    d.text((40, 476), "UPS GROUND", font=big, fill="black")
    d.text((40, 560), f"TRACKING #: {TRACKING_NUMBER}", font=small, fill="black")
    _barcode(d, 7, 60, 610, 740, 170)
    d.line([(12, 820), (787, 820)], fill="black", width=4)
    d.text((40, 850), f"ORDER NO: {ORDER_NUMBER}", font=bold, fill="black")
    d.text((40, 910), "REF: WEB ORDER 03/14/2025", font=body, fill="black")
    d.text((40, 960), "CONTENTS: BACKPACK, BLUE", font=body, fill="black")
    _barcode(d, 11, 40, 1030, 500, 110)
    d.text((760, 1150), "BILLING: P/P", font=small, fill="black", anchor="rs")
    path.write_bytes(photograph(label, (900, 1200), angle_deg=-4.0, seed=20250314, quality=82))


def draw_receipt(path: Path) -> None:
    """A shop receipt (thermal paper, monospaced) whose total is RECEIPT_TOTAL, photographed askew."""
    lines = ["BLUEBIRD MARKET", "210 Harbor Rd, Tacoma WA", "Tel 253-555-0187", "", "03/14/2025 17:42   #0427",
             "-" * 28]
    lines += [f"{name:<20s}{price:>8s}" for name, price in RECEIPT_ITEMS]
    lines += ["-" * 28, f"{'SUBTOTAL':<20s}{'22.08':>8s}", f"{'TAX 8%':<20s}{'1.77':>8s}",
              f"{'TOTAL':<20s}{RECEIPT_TOTAL:>8s}", "", f"{'VISA **** 4417':<20s}{'23.85':>8s}", "",
              "THANK YOU FOR SHOPPING!"]
    font, bold = _font("DejaVuSansMono.ttf", 30), _font("DejaVuSansMono-Bold.ttf", 30)
    receipt = Image.new("RGB", (560, 60 + 42 * len(lines) + 40), (246, 245, 240))
    d = ImageDraw.Draw(receipt)
    for i, line in enumerate(lines):
        centred = i < 3 or line.startswith("THANK")
        d.text((280 if centred else 28, 50 + 42 * i), line, font=bold if line.startswith(("TOTAL", "BLUEBIRD")) else font,
               fill=(30, 30, 34), anchor="ma" if centred else "la")
    path.write_bytes(photograph(receipt, (900, 1200), angle_deg=3.0, seed=20250315, quality=80))


def make_invoice_pdf(path: Path) -> None:
    """A 3-page text invoice (fpdf2, a text layer on every page) whose total, on the last page, is
    INVOICE_TOTAL."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(datetime(2025, 3, 14, tzinfo=UTC))  # fixed: fpdf2 hashes it into the file's /ID
    pdf.set_auto_page_break(False)

    def page(title: str, lines: list[str]) -> None:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.set_xy(20, 20)
        pdf.cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=12)
        pdf.set_x(20)
        for line in lines:
            pdf.cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
            pdf.set_x(20)

    subtotal = sum(qty * price for _, qty, price in INVOICE_ITEMS)
    tax = round(subtotal * INVOICE_TAX_RATE, 2)
    assert f"${subtotal + tax:,.2f}" == INVOICE_TOTAL, (subtotal, tax)
    rows = [f"{name}  x{qty}  @ ${price:,.2f}  =  ${qty * price:,.2f}" for name, qty, price in INVOICE_ITEMS]
    page("INVOICE INV-2025-0314", ["Northwind Supply Co., 1420 Commerce Dr, Austin, TX 78701", "",
                                   "Bill to: Maria Garcia, 88 Maple Ave Apt 4B, Portland, OR 97205",
                                   "Invoice date: 14 Mar 2025    Due date: 13 Apr 2025", "Order: AB123456", "",
                                   "Items (1 of 2)", *rows[:4]])
    page("INVOICE INV-2025-0314 (continued)", ["Items (2 of 2)", *rows[4:]])
    page("INVOICE INV-2025-0314 (summary)", [f"Subtotal: ${subtotal:,.2f}", f"Sales tax (8%): ${tax:,.2f}",
                                             f"Total due: {INVOICE_TOTAL}", "",
                                             "Payment by bank transfer within 30 days. Thank you for your business."])
    path.write_bytes(bytes(pdf.output()))


def main() -> None:
    for name, text in SPOKEN.items():
        (HERE / "audio" / f"{name}.wav").write_bytes(speak(text))
        (HERE / "audio" / f"{name}.txt").write_text(text + "\n")
    draw_parcel(HERE / "images" / "damaged_parcel.png")
    draw_shapes(HERE / "images" / "red_circle_blue_square.png")
    draw_parcel_label(HERE / "images" / "parcel_label.jpg")
    draw_receipt(HERE / "images" / "receipt.jpg")
    (HERE / "documents").mkdir(exist_ok=True)
    make_invoice_pdf(HERE / "documents" / "invoice.pdf")
    print("samples written under", HERE)


if __name__ == "__main__":
    main()
