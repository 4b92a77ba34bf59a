"""The request sets of bench/explain.py (issue 23's sanity checks), fixed before any run of it.

Six sets of `SET_SIZE` chat requests, each a user message with one media part and one text part:

- audio_helps: a clip says an order number, a name or a city; the text asks what was said.
- audio_irrelevant: a general-knowledge question typed, an unrelated clip ("The weather is mild today.").
- image_helps: a parcel label "ORDER QX4821" (OCR mode); the text asks for the order number.
- image_irrelevant: a label with unrelated words ("FRAGILE HANDLE WITH CARE"), a general-knowledge question.
- text_helps: the order number / name / city typed in the message, an unrelated clip attached.
- text_irrelevant: the general-knowledge question spoken in the clip, an unrelated typed note as the text.

Clips are spoken by hibari ("alloy" → heart, the project's Synthesizer as the Speech deployment builds
it) as 24 kHz 16-bit WAV; labels drawn with Pillow in DejaVu Sans as PNG. Everything is deterministic.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SET_SIZE = 22

CODES = ["QX4821", "BT3907", "LM5162", "RZ8043", "KD2719", "PV6350", "HN1488", "WC7264", "JF3591", "TS9026", "GA4137",
         "YB5809", "MU2673", "EC8415", "NW3348", "OP7092", "ZL1956", "DR6620", "VK4783", "SF2504", "CU9371", "IH5238"]
NAMES = ["Priya Sharma", "Tomasz Nowak", "Aisha Bello", "Kenji Watanabe", "Lucia Romero", "Oliver Grant", "Fatima Haddad",
         "Mateo Silva", "Ingrid Larsen", "Chen Wei", "Nadia Petrova", "Samuel Okafor", "Hannah Becker", "Rafael Costa",
         "Mei Lin", "Daniel Murphy", "Sofia Rossi", "Arjun Patel", "Elena Ivanova", "Lucas Martin", "Zara Ahmed", "Noah Fischer"]
CITIES = ["Edinburgh", "Lisbon", "Nairobi", "Osaka", "Montreal", "Krakow", "Santiago", "Melbourne", "Bergen", "Marseille",
          "Calgary", "Porto", "Seville", "Dublin", "Helsinki", "Auckland", "Glasgow", "Vancouver", "Florence", "Bristol",
          "Valencia", "Adelaide"]
# (what the clip / the typed text says, the question asked about it) per fact kind
SAID = {
    "order": ("My order number is {v}.", "What order number did I {verb}? Answer with the number only."),
    "name": ("My name is {v}.", "What name did I {verb}? Answer with the name only."),
    "city": ("I am calling from {v}.", "Which city did I {verb} I am calling from? Answer with the city only."),
}
VALUES = {"order": CODES, "name": NAMES, "city": CITIES}
# general knowledge: (question, expected answer). Numbers as words, so that the spoken form reads alike.
QUESTIONS = [
    ("What is the capital of France? Answer in one word.", "Paris"),
    ("What is the capital of Japan? Answer in one word.", "Tokyo"),
    ("What is the capital of Italy? Answer in one word.", "Rome"),
    ("What is the capital of Germany? Answer in one word.", "Berlin"),
    ("What is the capital of Spain? Answer in one word.", "Madrid"),
    ("What is the capital of Egypt? Answer in one word.", "Cairo"),
    ("What is two plus three? Answer with the number only.", "5"),
    ("What is seven plus five? Answer with the number only.", "12"),
    ("What is ten minus four? Answer with the number only.", "6"),
    ("What is three times four? Answer with the number only.", "12"),
    ("What is nine plus one? Answer with the number only.", "10"),
    ("How many days are in a week? Answer with the number only.", "7"),
    ("How many legs does a spider have? Answer with the number only.", "8"),
    ("How many months are in a year? Answer with the number only.", "12"),
    ("What color is the sky on a clear day? Answer in one word.", "blue"),
    ("What color is fresh grass? Answer in one word.", "green"),
    ("What is frozen water called? Answer in one word.", "ice"),
    ("Which planet do we live on? Answer in one word.", "Earth"),
    ("Which animal says moo? Answer in one word.", "cow"),
    ("What is the opposite of hot? Answer in one word.", "cold"),
    ("What do bees make? Answer in one word.", "honey"),
    ("What is the largest ocean on Earth? Answer in one word.", "Pacific"),
]
UNRELATED_SPEECH = [
    "The weather is mild today.", "The garden looks lovely in the spring.", "I walked the dog early this morning.",
    "The kettle is on if you would like some tea.", "We painted the kitchen a pale yellow.", "The train was quiet on the way home.",
    "My neighbour plays the piano in the evening.", "The leaves are turning brown in the park.", "It has been a long and busy week.",
    "The bakery on the corner sells good bread.", "We watched a film about the ocean last night.", "The cat is asleep on the sofa.",
    "There is a light breeze coming off the river.", "I am reading a book about old castles.", "The market was crowded on Saturday.",
    "She likes to swim before breakfast.", "The road by the school is being repaired.", "Our office moved to a brighter room.",
    "The soup needs a little more salt.", "He planted roses along the fence.", "The museum closes early on Sundays.",
    "The snow melted quickly after lunch.",
]
UNRELATED_LABELS = [
    "FRAGILE HANDLE WITH CARE", "THIS SIDE UP", "KEEP DRY", "DO NOT STACK", "PERISHABLE KEEP COLD", "GLASS HANDLE GENTLY",
    "PRIORITY MAIL", "RETURN TO SENDER", "OPEN THIS END", "HEAVY LIFT WITH CARE", "DO NOT BEND", "KEEP AWAY FROM HEAT",
    "SIGNATURE REQUIRED", "LIVE PLANTS", "HANDLE WITH CARE", "BOOKS ONLY", "GIFT INSIDE", "DO NOT DROP",
    "STORE IN A COOL PLACE", "NO HOOKS", "USE NO KNIFE", "PROTECT FROM FROST",
]
UNRELATED_NOTES = [
    "Note: ticket opened by the night shift.", "Note: customer prefers email contact.", "Note: call transferred from the front desk.",
    "Note: logged during the weekly review.", "Note: this ticket was merged with a duplicate.", "Note: agent on a training shift.",
    "Note: follow-up scheduled by the team lead.", "Note: chat started from the mobile app.", "Note: queue was busy at the time.",
    "Note: translated from the web form.", "Note: tagged for quality review.", "Note: the caller was on hold briefly.",
    "Note: opened from the help centre page.", "Note: the previous agent went off shift.", "Note: reviewed by the support lead.",
    "Note: created by the automatic router.", "Note: survey link to be sent afterwards.", "Note: second contact this month.",
    "Note: the customer asked for a callback.", "Note: priority set to normal.", "Note: escalation not needed.",
    "Note: recorded for training purposes.",
]


@dataclass
class Item:
    """One request of a set: its media (`audio` words to speak, or `label` text to draw), its typed text."""

    set: str
    text: str
    expected: str
    audio: str | None = None
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _fact(i: int, offset: int = 0) -> tuple[str, str]:
    kind = ("order", "name", "city")[(i + offset) % 3]
    return kind, VALUES[kind][(i if not offset else SET_SIZE - 1 - i) % len(VALUES[kind])]


def build_sets(n: int = SET_SIZE) -> dict[str, list[Item]]:
    sets: dict[str, list[Item]] = {name: [] for name in
                                   ("audio_helps", "audio_irrelevant", "image_helps", "image_irrelevant", "text_helps", "text_irrelevant")}
    for i in range(n):
        j = i % SET_SIZE
        kind, value = _fact(j)
        said, asked = SAID[kind]
        sets["audio_helps"].append(Item("audio_helps", asked.format(verb="say"), value, audio=said.format(v=value), extra={"fact": kind}))
        question, answer = QUESTIONS[j]
        sets["audio_irrelevant"].append(Item("audio_irrelevant", question, answer, audio=UNRELATED_SPEECH[j]))
        sets["image_helps"].append(Item("image_helps", "What is the order number on this label? Answer with the number only.",
                                        CODES[j], label=f"ORDER {CODES[j]}"))
        sets["image_irrelevant"].append(Item("image_irrelevant", QUESTIONS[(j + 7) % SET_SIZE][0], QUESTIONS[(j + 7) % SET_SIZE][1],
                                             label=UNRELATED_LABELS[j]))
        kind, value = _fact(j, offset=1)
        said, asked = SAID[kind]
        sets["text_helps"].append(Item("text_helps", f"{said.format(v=value)} {asked.format(verb='give' if kind != 'city' else 'say')}",
                                       value, audio=UNRELATED_SPEECH[(j + 11) % SET_SIZE], extra={"fact": kind}))
        question, answer = QUESTIONS[(j + 14) % SET_SIZE]
        sets["text_irrelevant"].append(Item("text_irrelevant", UNRELATED_NOTES[j], answer, audio=question))
    return sets


# --- media -------------------------------------------------------------------------------------------


def draw_label(text: str) -> bytes:
    """A parcel label: a white 640x240 card with a thick border and `text` in large DejaVu Sans (two
    lines when it is long), as PNG."""
    img = Image.new("RGB", (640, 240), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((8, 8, 631, 231), outline="black", width=5)
    words = text.split()
    lines = [text] if len(text) <= 14 else [" ".join(words[: (len(words) + 1) // 2]), " ".join(words[(len(words) + 1) // 2 :])]
    size = 60
    while size > 24:
        font = ImageFont.truetype(FONT, size)
        if max(draw.textlength(line, font=font) for line in lines) <= 560:
            break
        size -= 4
    step = size * 1.25
    top = 120 - step * len(lines) / 2
    for k, line in enumerate(lines):
        draw.text((320, top + k * step + step / 2), line, font=font, fill="black", anchor="mm")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def make_speaker() -> Callable[[str], bytes]:
    """text → a WAV of hibari speaking it (the Speech deployment's engine, voice "alloy"), 24 kHz 16-bit."""
    from modalities.speech.config import OUTPUT_RATE, SpeechConfig
    from modalities.speech.espeak import to_wav_bytes
    from modalities.speech.tts import Synthesizer

    synth = Synthesizer(SpeechConfig())
    cache: dict[str, bytes] = {}

    def speak(text: str) -> bytes:
        if text not in cache:
            cache[text] = to_wav_bytes(synth.synthesize(text, "alloy"), OUTPUT_RATE)
        return cache[text]

    return speak


def audio_part(wav: bytes) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def image_part(png: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}


def content_of(item: Item, speak: Callable[[str], bytes]) -> list[dict[str, Any]]:
    """The user message's content: the media part first, then the typed text."""
    media = audio_part(speak(item.audio)) if item.audio is not None else image_part(draw_label(item.label or ""))
    return [media, {"type": "text", "text": item.text}]
