"""`chorus explain`'s picture of a response's `chorus.explanation` (the contract: issue 23), drawn with Pillow.

`render(request, response)` is pure: the request (a `/v1/chat/completions` body, whose base64 media it
decodes) and the response in, a `PIL.Image` out. From the top: the answer with its token count and
log-prob; a bar of attention share per modality with the ablation Δ log-prob beside it; each audio clip's
waveform with a relevance strip under it (or, for transcript-mode clips, its words as coloured boxes);
each image with its segments' boxes as a heatmap and its OCR lines outlined; documents' lines and the
messages' sentences tinted by relevance; the method's passes and cost in a footer.

Media are numbered in request order across all messages: every `image_url`, `input_audio` and `file` part
counts (the contract's `media`); `message` is the index in `messages`. Relevance is coloured relative to
the most relevant segment of the same clip or image (text: of all the messages' sentences).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from serve.cli.explain_draw import (
    BLACK,
    FRAME,
    GREY,
    LIGHT,
    WHITE,
    decode_audio,
    decode_image,
    draw_chips,
    draw_colorbar,
    draw_runs,
    draw_waveform,
    font,
    layout_chips,
    layout_runs,
    line_height,
    normalise,
    relevance_color,
    wrap,
)

WIDTH = 880
MARGIN = 20
INNER = WIDTH - 2 * MARGIN
IMAGE_WIDTH = 480  # pictures are scaled to this width (and at most IMAGE_MAX_HEIGHT tall)
IMAGE_MAX_HEIGHT = 560
BAR_X, BAR_WIDTH = MARGIN + 110, 340
WAVE_HEIGHT, STRIP_HEIGHT = 80, 22
HEATMAP_ALPHA = 160  # the overlay's opacity for the most relevant box of an image
OCR_OUTLINE = (33, 102, 172)
SHARE_COLOR = (70, 130, 180)
ANSWER_MAX_LINES = 12
MEDIA_TYPES = ("image_url", "input_audio", "file")
MODALITY_ORDER = ("text", "instructions", "audio", "image", "document")

Box = tuple[int, int, int, int]


class ExplanationMissing(ValueError):
    """The response carries no `chorus.explanation`."""


@dataclass
class Rendered:
    """The picture and where its parts are, in its pixels: `audio:<media>:wave`, `audio:<media>:strip` (timed
    segments) or `audio:<media>:words` (transcript mode), `image:<media>` (the scaled picture), `document:<media>`,
    `modality:<kind>` (the share bar's frame), `message:<index>`, `footer`."""

    image: Image.Image
    regions: dict[str, Box] = field(default_factory=dict)


@dataclass
class Section:
    """A band of the picture: drawn by `paint(draw, image)` on a canvas `height` px tall, WIDTH wide."""

    height: int
    paint: Callable[[ImageDraw.ImageDraw, Image.Image], dict[str, Box]]


def render(request: dict[str, Any], response: dict[str, Any]) -> Image.Image:
    """The explanation of `response` (to `request`) as one RGB picture."""
    return layout(request, response).image


def explanation_of(response: dict[str, Any]) -> dict[str, Any]:
    explanation = (response.get("chorus") or {}).get("explanation") if isinstance(response, dict) else None
    if not isinstance(explanation, dict):
        raise ExplanationMissing("the response has no chorus.explanation (was the request sent with chorus.explain?)")
    return explanation


def answer_text(response: dict[str, Any]) -> str:
    """The answer of a chat completion (or a Responses object): its text, else its tool calls, else ''."""
    for choice in response.get("choices") or []:
        message = choice.get("message") or {}
        if message.get("content"):
            return str(message["content"])
        if (message.get("audio") or {}).get("transcript"):
            return str(message["audio"]["transcript"])
        calls = [c.get("function", {}).get("name", "?") for c in message.get("tool_calls") or []]
        if calls:
            return "tool calls: " + ", ".join(calls)
    texts = [part.get("text", "") for item in response.get("output") or [] for part in item.get("content") or []]
    return "".join(t for t in texts if t)


def media_parts(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's media parts in order: position i is media index i."""
    parts = []
    for message in request.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            parts += [p for p in content if isinstance(p, dict) and p.get("type") in MEDIA_TYPES]
    return parts


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def layout(request: dict[str, Any], response: dict[str, Any]) -> Rendered:
    """The picture and the regions it is made of (see `Rendered`)."""
    explanation = explanation_of(response)
    segments = [s for s in explanation.get("segments") or [] if isinstance(s, dict)]
    sections = [_header(answer_text(response), explanation.get("answer") or {}),
                _modalities(explanation.get("modalities") or {})]
    for index, part in enumerate(media_parts(request)):
        own = [s for s in segments if s.get("media") == index]
        if part["type"] == "input_audio":
            sections.append(_audio(index, part.get("input_audio") or {}, own))
        elif part["type"] == "image_url":
            sections.append(_image(index, (part.get("image_url") or {}).get("url", ""), own))
        elif own:
            sections.append(_document(index, (part.get("file") or {}).get("filename"), own))
    sections += _messages(request.get("messages") or [], segments)
    sections.append(_footer(explanation.get("method") or {}))
    return _stack(sections)


def _stack(sections: list[Section]) -> Rendered:
    gap = 14
    total = sum(s.height for s in sections) + gap * (len(sections) + 1)
    picture = Image.new("RGB", (WIDTH, total), WHITE)
    regions: dict[str, Box] = {}
    y = gap
    for section in sections:
        band = Image.new("RGB", (WIDTH, max(section.height, 1)), WHITE)
        found = section.paint(ImageDraw.Draw(band), band)
        picture.paste(band, (0, y))
        regions.update({name: (x0, y0 + y, x1, y1 + y) for name, (x0, y0, x1, y1) in found.items()})
        y += section.height + gap
    return Rendered(picture, regions)


def _title(draw: ImageDraw.ImageDraw, text: str, note: str = "") -> int:
    """A section title (and a grey note after it) at the top of a band; returns the height used."""
    bold, small = font(15, bold=True), font(12)
    draw.text((MARGIN, 0), text, fill=BLACK, font=bold)
    if note:
        draw.text((MARGIN + bold.getlength(text) + 10, 2), note, fill=GREY, font=small)
    draw.line([(MARGIN, line_height(bold) + 1), (WIDTH - MARGIN, line_height(bold) + 1)], fill=LIGHT)
    return line_height(bold) + 6


TITLE_HEIGHT = line_height(font(15, bold=True)) + 6


# --- header and modalities -----------------------------------------------------------------------------


def _header(answer: str, stats: dict[str, Any]) -> Section:
    body = font(15)
    lines = wrap(answer or "(no answer text)", body, INNER)
    if len(lines) > ANSWER_MAX_LINES:
        lines = [*lines[: ANSWER_MAX_LINES - 1], lines[ANSWER_MAX_LINES - 1] + " …"]
    tokens, logprob = stats.get("tokens"), stats.get("logprob")
    facts = [f"{tokens} tokens" if tokens is not None else "tokens: ?",
             f"log-prob {logprob:.2f}" if isinstance(logprob, int | float) else "log-prob: ?"]
    if isinstance(logprob, int | float) and isinstance(tokens, int) and tokens > 0:
        facts.append(f"{logprob / tokens:.2f} per token")
    big = font(20, bold=True)
    height = line_height(big) + 6 + len(lines) * line_height(body) + 4 + line_height(font(12))

    def paint(draw: ImageDraw.ImageDraw, _image: Image.Image) -> dict[str, Box]:
        draw.text((MARGIN, 0), "Chorus explanation", fill=BLACK, font=big)
        y = line_height(big) + 6
        for line in lines:
            draw.text((MARGIN, y), line, fill=BLACK, font=body)
            y += line_height(body)
        draw.text((MARGIN, y + 4), "answer: " + " · ".join(facts), fill=GREY, font=font(12))
        return {}

    return Section(height, paint)


def _modalities(modalities: dict[str, Any]) -> Section:
    kinds = sorted(modalities, key=lambda k: (MODALITY_ORDER.index(k) if k in MODALITY_ORDER else 99, k))
    body, small = font(13), font(12)
    row = line_height(body) + 8
    note = "bar: share of the answer's attention · Δ log-prob: the answer without this input (negative = it helped)"
    height = TITLE_HEIGHT + row * max(len(kinds), 1) + line_height(small)

    def paint(draw: ImageDraw.ImageDraw, _image: Image.Image) -> dict[str, Box]:
        regions: dict[str, Box] = {}
        y = _title(draw, "Modalities")
        if not kinds:
            draw.text((MARGIN, y), "(none reported)", fill=GREY, font=body)
        for kind in kinds:
            entry = modalities.get(kind) or {}
            share = entry.get("attention_share")
            share = min(max(float(share), 0.0), 1.0) if isinstance(share, int | float) else 0.0
            draw.text((MARGIN, y + 3), kind, fill=BLACK, font=body)
            frame = (BAR_X, y + 2, BAR_X + BAR_WIDTH, y + row - 6)
            draw.rectangle(frame, fill=(245, 245, 245), outline=FRAME)
            if share > 0:
                draw.rectangle((BAR_X + 1, y + 3, BAR_X + 1 + round((BAR_WIDTH - 2) * share), y + row - 7), fill=SHARE_COLOR)
            delta = entry.get("ablation_delta_logprob")
            words = [f"{share:.0%}", f"Δ log-prob {delta:+.2f}" if isinstance(delta, int | float) else "Δ log-prob –"]
            if entry.get("tokens") is not None:
                words.append(f"{entry['tokens']} tokens")
            x = BAR_X + BAR_WIDTH + 10
            for word, width in zip(words, (50, 150, 100)):
                draw.text((x, y + 3), word, fill=BLACK, font=body)
                x += width
            regions[f"modality:{kind}"] = frame
            y += row
        draw.text((MARGIN, y), note, fill=GREY, font=small)
        return regions

    return Section(height, paint)


# --- audio -----------------------------------------------------------------------------------------------


def _audio(index: int, audio: dict[str, Any], segments: list[dict[str, Any]]) -> Section:
    timed = [s for s in segments if isinstance(s.get("start_s"), int | float) and isinstance(s.get("end_s"), int | float)]
    timed_ids = {id(s) for s in timed}
    words = [s for s in segments if s.get("text") and id(s) not in timed_ids]
    values = dict(zip(map(id, segments), normalise([s.get("relevance", 0.0) for s in segments])))  # the clip's max: 1
    samples, rate, problem = None, 0, ""
    try:
        samples, rate = decode_audio(audio.get("data") or "")
    except Exception as err:  # any undecodable clip: draw the strip without its waveform
        problem = f"waveform not shown: {type(err).__name__}"
    duration = samples.size / rate if samples is not None and rate else 0.0
    duration = max(duration, max((float(s["end_s"]) for s in timed), default=0.0)) or 1.0
    note = ", ".join(x for x in (audio.get("format"), f"{duration:.2f} s", f"{rate} Hz" if rate else "", problem) if x)
    small, chip_font = font(11), font(12)
    chip_labels = [str(s["text"]) for s in words]
    chip_boxes, chips_height = layout_chips(chip_labels, chip_font, INNER)
    strip = bool(timed) or not words  # transcript mode: the words instead of the strip
    wave_top = TITLE_HEIGHT
    strip_top = wave_top + WAVE_HEIGHT
    axis_top = strip_top + (STRIP_HEIGHT if strip else 0) + 2
    y_after = axis_top + line_height(small) + 4
    chips_top = y_after + (line_height(small) if words else 0)
    legend_height = 46
    height = chips_top + chips_height + (8 if words else 0) + legend_height

    def paint(draw: ImageDraw.ImageDraw, _image: Image.Image) -> dict[str, Box]:
        _title(draw, f"Audio #{index}", note)
        wave = (MARGIN, wave_top, MARGIN + INNER, strip_top - 1)
        band = (MARGIN, strip_top, MARGIN + INNER, strip_top + STRIP_HEIGHT)
        draw_waveform(draw, wave, samples)
        regions = {f"audio:{index}:wave": wave}
        if strip:
            draw.rectangle(band, fill=LIGHT)
            regions[f"audio:{index}:strip"] = band
        for seg in timed:
            value = values[id(seg)]
            x0 = MARGIN + INNER * max(float(seg["start_s"]), 0.0) / duration
            x1 = MARGIN + INNER * min(float(seg["end_s"]), duration) / duration
            if x1 > x0:
                draw.rectangle((round(x0), strip_top, max(round(x1) - 1, round(x0)), strip_top + STRIP_HEIGHT),
                               fill=relevance_color(value))
        if strip:
            draw.rectangle(band, outline=FRAME)
        step = _tick_step(duration)
        t = 0.0
        while t <= duration + 1e-9:
            x = MARGIN + INNER * t / duration
            draw.line([(x, axis_top - 2), (x, axis_top + 2)], fill=GREY)
            label = f"{t:g} s"
            draw.text((min(x, MARGIN + INNER - small.getlength(label)), axis_top + 2), label, fill=GREY, font=small)
            t += step
        if strip and not timed:
            draw.text((MARGIN + 6, strip_top + 4), "no segments", fill=GREY, font=small)
        if words:
            draw.text((MARGIN, y_after), "transcript words, by relevance", fill=GREY, font=small)
            colors = [relevance_color(values[id(s)]) for s in words]
            draw_chips(draw, (MARGIN, chips_top), chip_labels, colors, chip_boxes, chip_font)
            regions[f"audio:{index}:words"] = (MARGIN, chips_top, MARGIN + INNER, chips_top + chips_height)
        top = max([s.get("relevance", 0.0) for s in segments if isinstance(s.get("relevance"), int | float)], default=0.0)
        draw_colorbar(draw, MARGIN, height - legend_height + 4, top)
        return regions

    return Section(height, paint)


def _tick_step(duration: float) -> float:
    for step in (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if duration / step <= 10:
            return step
    return 1200.0


# --- images and documents --------------------------------------------------------------------------------


def _image(index: int, url: str, segments: list[dict[str, Any]]) -> Section:
    picture = decode_image(url)
    boxed = [s for s in segments if _box(s) is not None]
    lines = [s for s in segments if s.get("text")]
    scale = min(IMAGE_WIDTH / picture.width, IMAGE_MAX_HEIGHT / picture.height) if picture else 1.0
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))) if picture else (IMAGE_WIDTH, 40)
    chip_font = font(12)
    chip_labels = [str(s["text"]) for s in lines]
    chip_boxes, chips_height = layout_chips(chip_labels, chip_font, INNER)
    small = font(11)
    chips_top = TITLE_HEIGHT + max(size[1], 110) + 8 + (line_height(small) if lines else 0)
    height = chips_top + chips_height
    shape = f"{picture.width}×{picture.height} px" if picture else "not a readable data: URL, picture not shown"
    note = f"{shape}, {len(lines)} OCR lines, {len(boxed) - len([s for s in boxed if s.get('text')])} patch regions"
    values = dict(zip(map(id, segments), normalise([s.get("relevance", 0.0) for s in segments])))

    def paint(draw: ImageDraw.ImageDraw, band: Image.Image) -> dict[str, Box]:
        _title(draw, f"Image #{index}", note)
        x0, y0 = MARGIN, TITLE_HEIGHT
        region = (x0, y0, x0 + size[0], y0 + size[1])
        if picture is None:
            draw.rectangle(region, fill=LIGHT, outline=FRAME)
            draw.text((x0 + 8, y0 + 12), "picture not available", fill=GREY, font=small)
        else:
            base = picture.resize(size, Image.Resampling.LANCZOS).convert("RGBA")
            overlay = Image.new("RGBA", size, (0, 0, 0, 0))
            shade = ImageDraw.Draw(overlay)
            for seg in sorted(boxed, key=lambda s: values[id(s)]):  # the most relevant drawn last, on top
                value = values[id(seg)]
                if value > 0:
                    shade.rectangle(_scaled(_box(seg), scale), fill=(*relevance_color(value), round(HEATMAP_ALPHA * value)))
            band.paste(Image.alpha_composite(base, overlay).convert("RGB"), (x0, y0))
            for seg in boxed:
                if seg.get("text"):
                    draw.rectangle(_offset(_scaled(_box(seg), scale), x0, y0), outline=OCR_OUTLINE, width=2)
        legend_x = x0 + size[0] + 24
        top = max([s.get("relevance", 0.0) for s in segments if isinstance(s.get("relevance"), int | float)], default=0.0)
        y = y0 + draw_colorbar(draw, legend_x, y0, top) + 8
        draw.rectangle((legend_x, y + 2, legend_x + 22, y + 14), outline=OCR_OUTLINE, width=2)
        draw.text((legend_x + 30, y), "OCR line", fill=GREY, font=small)
        draw.text((legend_x, y + 22), "fill: relevance of the region", fill=GREY, font=small)
        if lines:
            draw.text((MARGIN, chips_top - line_height(small)), "lines read, by relevance", fill=GREY, font=small)
            colors = [relevance_color(values[id(s)]) for s in lines]
            draw_chips(draw, (MARGIN, chips_top), chip_labels, colors, chip_boxes, chip_font)
        return {f"image:{index}": region}

    return Section(height, paint)


def _box(segment: dict[str, Any]) -> tuple[float, float, float, float] | None:
    box = segment.get("box")
    if isinstance(box, list | tuple) and len(box) == 4 and all(isinstance(v, int | float) for v in box):
        return tuple(float(v) for v in box)  # type: ignore[return-value]
    return None


def _scaled(box, scale: float) -> Box:
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _offset(box: Box, dx: int, dy: int) -> Box:
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


def _document(index: int, filename: str | None, segments: list[dict[str, Any]]) -> Section:
    values = normalise([s.get("relevance", 0.0) for s in segments])
    runs: list[tuple[str, Any]] = []
    for i, (seg, value) in enumerate(zip(segments, values)):
        runs += [("\n", None)] if i else []
        runs.append((" ".join(str(seg.get("text", "")).split()) or "(no text)", relevance_color(value)))
    body = font(13)
    placed, text_height = layout_runs(runs, body, INNER)

    def paint(draw: ImageDraw.ImageDraw, _image: Image.Image) -> dict[str, Box]:
        _title(draw, f"Document #{index}", filename or "")
        draw_runs(draw, (MARGIN, TITLE_HEIGHT), placed, body)
        return {f"document:{index}": (MARGIN, TITLE_HEIGHT, MARGIN + INNER, TITLE_HEIGHT + text_height)}

    return Section(TITLE_HEIGHT + text_height, paint)


# --- messages and footer ---------------------------------------------------------------------------------


def _messages(messages: list[dict[str, Any]], segments: list[dict[str, Any]]) -> list[Section]:
    spans = [s for s in segments if s.get("kind") in ("text", "instructions") and isinstance(s.get("message"), int)]
    values = dict(zip(map(id, spans), normalise([s.get("relevance", 0.0) for s in spans])))
    sections = []
    for m in sorted({s["message"] for s in spans}):
        own = [s for s in spans if s["message"] == m]
        message = messages[m] if 0 <= m < len(messages) and isinstance(messages[m], dict) else {}
        kinds = "/".join(sorted({s["kind"] for s in own}))
        runs = _tinted_runs(message_text(message), [(s, relevance_color(values[id(s)])) for s in own])
        sections.append(_text_section(f"Message {m}", f"{message.get('role', '?')} ({kinds})", runs, f"message:{m}"))
    return sections


def _tinted_runs(text: str, spans: list[tuple[dict[str, Any], tuple[int, int, int]]]) -> list[tuple[str, Any]]:
    """`text` cut into runs, each sentence span on its colour; a span whose offsets don't match the text
    is found by its own text, else shown after the message."""
    located, extra = [], []
    for seg, color in spans:
        quoted = seg.get("text")
        span = seg.get("span")
        start = None
        if isinstance(span, list | tuple) and len(span) == 2 and all(isinstance(v, int) for v in span):
            a, b = span
            if 0 <= a < b <= len(text) and (not quoted or text[a:b].strip() == str(quoted).strip()):
                start, end = a, b
        if start is None and quoted and str(quoted) in text:
            start = text.index(str(quoted))
            end = start + len(str(quoted))
        if start is None:
            if quoted:
                extra.append((str(quoted), color))
            continue
        located.append((start, end, color))
    runs: list[tuple[str, Any]] = []
    cursor = 0
    for start, end, color in sorted(located, key=lambda r: r[0]):
        start = max(start, cursor)
        if end <= start:
            continue
        if start > cursor:
            runs.append((text[cursor:start], None))
        runs.append((text[start:end], color))
        cursor = end
    if cursor < len(text):
        runs.append((text[cursor:], None))
    for quoted, color in extra:
        runs += [("\n", None), (quoted, color)]
    return runs


def _text_section(title: str, note: str, runs: list[tuple[str, Any]], name: str) -> Section:
    body = font(13)
    placed, text_height = layout_runs(runs, body, INNER)

    def paint(draw: ImageDraw.ImageDraw, _image: Image.Image) -> dict[str, Box]:
        _title(draw, title, note)
        draw_runs(draw, (MARGIN, TITLE_HEIGHT), placed, body)
        return {name: (MARGIN, TITLE_HEIGHT, MARGIN + INNER, TITLE_HEIGHT + text_height)}

    return Section(TITLE_HEIGHT + text_height, paint)


def _footer(method: dict[str, Any]) -> Section:
    small = font(11)
    facts = [f"cost {method['cost_ms']:.1f} ms" if isinstance(method.get("cost_ms"), int | float) else "cost ?",
             f"{method.get('passes', '?')} passes"]
    facts += [f"{key} {method[key]}" for key in ("rows", "layers", "heads") if key in method]
    facts += [f"{key}: {method[key]}" for key in ("attention", "ablation", "segments", "model") if method.get(key)]
    lines = wrap("method · " + " · ".join(facts), small, INNER)

    def paint(draw: ImageDraw.ImageDraw, _image: Image.Image) -> dict[str, Box]:
        draw.line([(MARGIN, 0), (WIDTH - MARGIN, 0)], fill=FRAME)
        for i, line in enumerate(lines):
            draw.text((MARGIN, 4 + i * line_height(small)), line, fill=GREY, font=small)
        return {"footer": (MARGIN, 0, MARGIN + INNER, 4 + len(lines) * line_height(small))}

    return Section(4 + len(lines) * line_height(small), paint)
