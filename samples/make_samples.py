"""Regenerate the sample media: spoken customer-service requests (espeak-ng, 16 kHz mono WAV)
and a few product photos drawn with Pillow.

    .venv/bin/python samples/make_samples.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from modalities.speech.espeak import synthesize, to_wav_bytes

HERE = Path(__file__).resolve().parent

SPOKEN = {
    "where_is_my_order": ("Hi, I ordered a blue backpack last week and it has not arrived yet. Where is my order?", "en-us", 160),
    "refund_request": ("I would like a refund for the kettle I bought, it stopped working after two days.", "en-gb", 150),
    "change_appointment": ("Can I move my appointment from Monday morning to Wednesday afternoon?", "en-us+f3", 170),
    "billing_question": ("Why was I charged twice on my last bill?", "en-gb+m3", 145),
}


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


def main() -> None:
    for name, (text, voice, wpm) in SPOKEN.items():
        (HERE / "audio" / f"{name}.wav").write_bytes(to_wav_bytes(synthesize(text, voice=voice, speed_wpm=wpm)))
        (HERE / "audio" / f"{name}.txt").write_text(text + "\n")
    draw_parcel(HERE / "images" / "damaged_parcel.png")
    draw_shapes(HERE / "images" / "red_circle_blue_square.png")
    print("samples written under", HERE)


if __name__ == "__main__":
    main()
