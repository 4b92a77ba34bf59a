"""Which prompt positions hold which input, and the explanation's segments from attention mass.

A `PromptPlan` knows, for each text token, the request text it came from (`sources`, `literals`) and,
for each media slot, how many soft tokens it spliced. From that: the positions of each input kind
(what an ablation removes) and the segments an answer's attention is summed over — sentences of a
message's text, words of a transcript, lines of text read from an image or a document, 80 ms bins of
embedded audio, patches of an embedded image. Pure Python over the plan; the mass is a sequence of
floats per prompt position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fusion.prompt import MediaSlot, PromptPlan

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*|\n")
_WORD = re.compile(r"\S+")
_LINE = re.compile(r"[^\n]+")
MEDIA_TEXT_UNIT = {"audio": _WORD}  # transcripts by word; text read from images and documents by line


@dataclass
class Segment:
    fields: dict  # what the segment is: kind, message/media, span, text, times
    positions: list[int] = field(default_factory=list)


@dataclass
class PlanMap:
    kinds: dict[str, list[int]]  # input kind → its prompt positions
    segments: list[Segment]


def plan_map(plan: PromptPlan, media_tokens: Mapping[int, int], seconds_per_token: Mapping[int, float]) -> PlanMap:
    """Positions per kind and the segments of `plan`, whose media item `i` spliced `media_tokens[i]`
    soft tokens (an audio item's each covering `seconds_per_token[i]` of its clip)."""
    kinds: dict[str, list[int]] = {}
    units: dict[tuple[int, int], Segment] = {}  # (literal, unit start) → its segment
    bounds = [_units(literal.text, literal.kind, literal.media) for literal in plan.literals]
    segments: list[Segment] = []
    position, text_token = 0, 0
    for piece in plan.pieces:
        if isinstance(piece, MediaSlot):
            count = media_tokens.get(piece.index, 0)
            spots = list(range(position, position + count))
            kinds.setdefault(piece.kind, []).extend(spots)
            segments.extend(_slot_segments(piece, spots, seconds_per_token.get(piece.index)))
            position += count
            continue
        for _ in piece:
            source = plan.sources[text_token] if text_token < len(plan.sources) else None
            if source is not None:
                number, char = source
                literal = plan.literals[number]
                kinds.setdefault(literal.kind, []).append(position)
                start, end = _unit_at(bounds[number], char)
                segment = units.get((number, start))
                if segment is None:
                    segment = units[(number, start)] = Segment(_text_fields(literal, start, end))
                    segments.append(segment)
                segment.positions.append(position)
            position += 1
            text_token += 1
    return PlanMap(kinds=kinds, segments=segments)


def segment_relevance(segments: Sequence[Segment], mass: Sequence[float]) -> list[dict]:
    """Each segment with its relevance: its share of the attention mass on all segments."""
    sums = [sum(mass[p] for p in segment.positions) for segment in segments]
    total = sum(sums) or 1.0
    return [{**segment.fields, "relevance": round(value / total, 6)} for segment, value in zip(segments, sums)]


def _units(text: str, kind: str, media: int | None) -> list[tuple[int, int]]:
    pattern = _SENTENCE if media is None else MEDIA_TEXT_UNIT.get(kind, _LINE)
    return [(m.start(), m.end()) for m in pattern.finditer(text) if m.group().strip()] or [(0, len(text))]


def _unit_at(bounds: list[tuple[int, int]], char: int) -> tuple[int, int]:
    """The unit a token starting at `char` belongs to (the one it starts in, else the next one: a
    token that starts with the space before a word belongs to that word)."""
    for start, end in bounds:
        if char < end:
            return start, end
    return bounds[-1]


def _text_fields(literal, start: int, end: int) -> dict:
    text = literal.text[start:end].strip()
    if literal.media is None:
        return {"kind": literal.kind, "message": literal.message, "span": [start, end], "text": text}
    if literal.kind == "audio":
        return {"kind": "audio", "media": literal.media, "text": text}
    return {"kind": literal.kind, "media": literal.media, "line": literal.text.count("\n", 0, start), "text": text}


def _slot_segments(slot: MediaSlot, positions: list[int], seconds: float | None) -> list[Segment]:
    """Embedded media: audio by its soft tokens' time bins, an image by patch (row-major grid)."""
    out = []
    side = round(len(positions) ** 0.5)
    for i, position in enumerate(positions):
        if slot.kind == "audio" and seconds:
            fields = {"kind": "audio", "media": slot.index, "start_s": round(i * seconds, 3), "end_s": round((i + 1) * seconds, 3)}
        elif side * side == len(positions):
            fields = {"kind": slot.kind, "media": slot.index, "patch": [i // side, i % side], "grid": [side, side]}
        else:
            fields = {"kind": slot.kind, "media": slot.index, "token": i}
        out.append(Segment(fields, [position]))
    return out
