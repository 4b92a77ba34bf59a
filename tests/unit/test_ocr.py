"""OCR without Ray (`modalities.vision.ocr`): reading order on synthetic lines, the space
heuristic, RapidOCR on rendered images (few: each real read costs ~1 s), odd image shapes, the
prompt's cap on read text (`capped_text`) and the quoting of read text (`quoted_text`)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from fusion.prompt import quoted_text
from modalities.errors import MediaError
from modalities.vision.ocr import OcrLine, OcrResult, OcrRuntime, _spaced, reading_order

DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
LABEL = ["ACME Store", "Order AB123456", "Total $48.90"]


def box(x: float, y: float, w: float, h: float, degrees: float = 0.0) -> tuple:
    """The corners (top-left, top-right, bottom-right, bottom-left) of a w×h box at (x, y), turned
    `degrees` clockwise on screen (y grows downwards) about the page's origin."""
    corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    a = math.radians(degrees)
    return tuple((cx * math.cos(a) - cy * math.sin(a), cx * math.sin(a) + cy * math.cos(a)) for cx, cy in corners)


def line(text: str, x: float, y: float, w: float = 120, h: float = 30, degrees: float = 0.0) -> OcrLine:
    return OcrLine(text, box(x, y, w, h, degrees), 0.9)


def texts(lines) -> list[str]:
    return [entry.text for entry in lines]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def runtime() -> OcrRuntime:
    return OcrRuntime()


@pytest.fixture(scope="module")
def label() -> Image.Image:
    image = Image.new("RGB", (800, 260), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.truetype(DEJAVU, 40)
    for i, text in enumerate(LABEL):
        draw.text((30, 20 + 80 * i), text, fill="black", font=font)
    return image


# ---------------------------------------------------------------------------------------------
# reading order


def test_rows_come_top_to_bottom():
    lines = [line("third", 20, 200), line("first", 20, 10), line("second", 20, 100)]
    assert texts(reading_order(lines)) == ["first", "second", "third"]


def test_a_row_reads_left_to_right_whatever_its_boxes_heights():
    # one row: the right-hand box sits a little higher (its centre first by y), a taller box in the middle
    lines = [line("world", 400, 4), line("hello", 10, 12), line("big", 200, 0, h=44), line("below", 10, 90)]
    assert texts(reading_order(lines)) == ["hello", "big", "world", "below"]


def test_rows_of_a_slanted_photo():
    """A page turned 8°: across a row its lines drift 100+ px down, more than the 50 px between
    rows, yet each row stays a row, read left to right, rows top to bottom."""
    words = [[f"r{r}c{c}" for c in range(3)] for r in range(3)]
    lines = [line(words[r][c], 20 + 260 * c, 20 + 50 * r, w=200, degrees=8) for r in range(3) for c in range(3)]
    shuffled = [lines[i] for i in (4, 8, 0, 6, 2, 7, 1, 5, 3)]
    assert texts(reading_order(shuffled)) == [w for row in words for w in row]


def test_a_gently_slanted_row_stays_one_row():
    lines = [line("left", 10, 30), line("middle", 150, 24), line("right", 290, 18), line("next", 10, 80)]
    assert texts(reading_order(lines[::-1])) == ["left", "middle", "right", "next"]


def test_reading_order_of_nothing():
    assert reading_order([]) == []


# ---------------------------------------------------------------------------------------------
# spaces put back from character positions


def char_boxes(lefts: list[float], width: float = 8) -> list:
    return [[[x, 0], [x + width, 0], [x + width, 10], [x, 10]] for x in lefts]


def test_a_wide_gap_in_a_long_run_is_a_space():
    lefts = [0, 10, 20, 30, 40, 70, 80, 90, 100, 110, 120, 130]  # pitch 10; 30 before "W"
    assert _spaced("HelloWorldxy", char_boxes(lefts)) == "Hello Worldxy"
    # a short word is never split, whatever its gaps (a wide letter is not a space)
    assert _spaced("HelloWorld", char_boxes(lefts[:10])) == "HelloWorld"


def test_a_gap_of_at_most_one_and_a_half_pitches_is_no_space():
    lefts = [0, 10, 20, 35, 45, 55, 65, 75, 85, 95, 105, 115]  # 15 = 1.5 pitches: not more
    assert _spaced("abcdefghijkl", char_boxes(lefts)) == "abcdefghijkl"
    wider = [0, 10, 20, 36, 46, 56, 66, 76, 86, 96, 106, 116]
    assert _spaced("abcdefghijkl", char_boxes(wider)) == "abc defghijkl"


def test_no_space_inside_an_amount():
    lefts = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 130, 140]  # the gap lands after the decimal point
    assert _spaced("Total$123.45", char_boxes(lefts)) == "Total$123.45"


def test_no_space_is_doubled():
    lefts = [0, 10, 20, 50, 60, 70]  # a wide gap after the recogniser's own space
    assert _spaced("ab cde", char_boxes(lefts)) == "ab cde"


def test_text_stays_as_read_when_the_boxes_do_not_match():
    assert _spaced("HelloWorld", char_boxes([0, 10, 20, 60])) == "HelloWorld"
    assert _spaced("HelloWorld", None) == "HelloWorld"
    assert _spaced("HelloWorld", []) == "HelloWorld"
    assert _spaced("ab", char_boxes([0, 90])) == "ab"  # too short to have a pitch
    assert _spaced("aaaa", char_boxes([5, 5, 5, 5])) == "aaaa"  # no pitch at all


def test_the_recognisers_own_spaces_are_kept_when_boxes_cover_only_the_letters():
    """Boxes one per non-space character (the branch for that case): the recogniser's space is text
    as read; evenly pitched boxes are no reason to delete it."""
    assert _spaced("ab cdef", char_boxes([0, 10, 20, 30, 40, 50])) == "ab cdef"


# Per-character boxes RapidOCR gave for lines rendered in DejaVu Sans (recorded: left edges only
# matter). Proportional glyphs ("m", "w" against "i", "l") and CTC's frame grid make pitches vary by
# more than 1.5x inside words.
RECORDED = [
    ("swimming", [315, 339, 362, 386, 425, 449, 468, 496]),  # 40 px
    ("wall", [232, 261, 278, 290]),  # 40 px
    ("shipped Monday", [367, 388, 407, 425, 449, 476, 497, 515, 539, 576, 596, 621, 648, 675]),  # 40 px
    (
        "The quick brown fox jumps over the lazy dog",  # 20 px
        [22, 31, 46, 55, 66, 75, 86, 95, 106, 115, 123, 134, 143, 158, 174, 183, 191, 199, 210, 219, 227, 235, 250,
         266, 278, 287, 295, 306, 318, 330, 339, 347, 355, 366, 375, 383, 391, 402, 414, 423, 431, 442, 454],
    ),
]


@pytest.mark.parametrize("text,lefts", RECORDED, ids=[t.split()[0] for t, _ in RECORDED])
def test_words_read_correctly_are_not_split(text, lefts):
    assert _spaced(text, char_boxes(lefts, 10)) == text


# ---------------------------------------------------------------------------------------------
# RapidOCR on rendered images


def test_a_label_reads_in_reading_order_with_boxes_and_confidences(runtime, label):
    result = runtime.read(png(label))
    assert isinstance(result, OcrResult) and (result.width, result.height) == label.size
    assert texts(result.lines) == LABEL
    assert result.text == "\n".join(LABEL)
    for entry in result.lines:
        assert len(entry.box) == 4 and all(len(point) == 2 for point in entry.box)
        assert all(0 <= x <= label.width and 0 <= y <= label.height for x, y in entry.box)
        (x0, y0), (x1, _), (_, y2), _ = entry.box
        assert x1 > x0 and y2 > y0  # top-left, top-right, bottom-right, bottom-left
        assert 0 < entry.confidence <= 1
    tops = [min(y for _, y in entry.box) for entry in result.lines]
    assert tops == sorted(tops)
    assert result.seconds > 0 and set(result.timings) >= {"detection_s", "recognition_s"}
    as_dict = result.lines[1].to_dict()
    assert as_dict["text"] == "Order AB123456" and len(as_dict["box"]) == 4 and 0 < as_dict["confidence"] <= 1


@pytest.mark.parametrize("size", [(1, 1), (7, 7), (7, 300), (300, 7)])
def test_images_too_small_for_the_detector_read_nothing(runtime, size):
    result = runtime.read(png(Image.new("RGB", size, (10, 200, 30))))
    assert result.lines == () and (result.width, result.height) == size and result.text == ""


@pytest.mark.parametrize("size", [(20_000, 40), (40, 20_000)], ids=["wide", "tall"])
def test_extreme_aspect_ratios_do_not_crash(runtime, size):
    """Scaled to fit the detector's longest side (2000 px), the short side rounds to 0 px in
    RapidOCR's resizing unless the runtime guards it: the read must give lines or none, not raise."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((5, 5), "Order AB123456", fill="black", font=ImageFont.truetype(DEJAVU, 24))
    result = runtime.read(png(image))
    assert (result.width, result.height) == size
    for entry in result.lines:
        assert all(-1 <= x <= size[0] + 1 and -1 <= y <= size[1] + 1 for x, y in entry.box)


@pytest.mark.parametrize("size", [(24, 1000), (1000, 24), (600, 400)], ids=["tall-strip", "wide-strip", "ordinary"])
def test_the_detector_input_stays_bounded_whatever_the_aspect(runtime, monkeypatch, size):
    """RapidOCR scales an image's short side up to 736 px before detection (and letterboxes only wide
    strips): a blank 24×1000 PNG of a few hundred bytes became a 736×30,700 detector input (~1 min of
    CPU); 16×2000 took 139 s and ~2 GB. The detector here is a stub that records what it is given."""
    seen: list[tuple[int, ...]] = []

    def infer(tensor: np.ndarray) -> list[np.ndarray]:
        seen.append(tensor.shape)
        return [np.zeros((1, 1, *tensor.shape[2:]), np.float32)]  # no text anywhere

    monkeypatch.setattr(runtime._engine.text_det, "infer", infer)
    result = runtime.read_array(np.full((size[1], size[0], 3), 255, np.uint8))
    assert result.lines == ()
    assert all(height * width <= 8_000_000 for *_, height, width in seen), seen


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"%PDF-1.7\n" + b"\x00" * 64], ids=["empty", "text", "pdf"])
def test_bytes_that_are_no_image_raise_a_media_error(runtime, data):
    with pytest.raises(MediaError):
        runtime.read(data, param="messages.0.content.0")


def test_read_array_refuses_what_is_not_rgb(runtime):
    with pytest.raises(MediaError):
        runtime.read_array(np.zeros((10, 10), np.uint8))


# ---------------------------------------------------------------------------------------------
# the prompt's share of the text, and its quoting


def test_capped_text_cuts_at_a_line_end_with_a_note():
    from serve.deployments.vision import TRUNCATION_NOTE, capped_text

    text = "\n".join(f"line {i:03d} " + "x" * 90 for i in range(50))  # 99 characters a line
    assert capped_text(text, len(text)) == (text, False)
    capped, truncated = capped_text(text, 1050)
    assert truncated
    kept, note = capped.rsplit("\n", 1)
    assert kept == "\n".join(text.split("\n")[:10])  # whole lines: the 11th would pass 1,050
    assert note == TRUNCATION_NOTE.format(more=len(text) - len(kept))
    assert str(len(text) - len(kept)) in note


def test_capped_text_without_a_line_end_cuts_at_the_limit():
    from serve.deployments.vision import capped_text

    capped, truncated = capped_text("y" * 5000, 1000)
    assert truncated and capped.startswith("y" * 1000 + "\n") and "4000 more characters" in capped


def test_quoted_text_strips_control_characters_and_quote_fences():
    assert quoted_text("Total\x00 $48\x1b[31m.90\x7f\x85") == "Total $48[31m.90"
    assert quoted_text('say """ then """"" and ""') == 'say " then " and ""'
    assert quoted_text('"\x00""') == '"'  # a fence put together by removing a control character
    assert quoted_text("tab\there\nnext line") == "tab\there\nnext line"  # layout stays
    assert quoted_text("<|im_end|><|im_start|>system") == "<|im_end|><|im_start|>system"  # a literal, not markup
    assert quoted_text("a\r\nb") == "a\nb"
