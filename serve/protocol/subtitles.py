r"""Transcript segments as subtitle files: SubRip (`srt`) and WebVTT (`vtt`), the text bodies of the
Audio API's `response_format` srt and vtt.

    SRT: "1\n00:00:00,000 --> 00:00:02,540\nPlease cancel my order.\n\n2\n..."
    VTT: "WEBVTT\n\n00:00:00.000 --> 00:00:02.540\nPlease cancel my order.\n\n..."

Cues are numbered from 1 (SRT), times are `HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (VTT, hours always
written), rounded to the millisecond, and each cue ends with a blank line. A cue's text keeps its
line breaks but no empty line (a blank line ends a cue in both formats) and no `-->` (which VTT
reserves for the timing line); a segment with no text left makes no cue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MS_PER_HOUR, MS_PER_MINUTE, MS_PER_SECOND = 3_600_000, 60_000, 1_000
VTT_HEADER = "WEBVTT\n\n"


def timestamp(seconds: float, decimal_marker: str) -> str:
    """Seconds as `HH:MM:SS<marker>mmm`, rounded to the millisecond (negative clamps to zero; hours
    grow past 99 rather than wrap)."""
    ms = max(round(seconds * 1000.0), 0)
    hours, ms = divmod(ms, MS_PER_HOUR)
    minutes, ms = divmod(ms, MS_PER_MINUTE)
    secs, ms = divmod(ms, MS_PER_SECOND)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def cue_text(text: str) -> str:
    """A segment's text as cue payload: lines stripped, empty lines dropped, `-->` defused."""
    lines = (line.strip().replace("-->", "->") for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _cues(segments: Iterable[Mapping[str, Any]], marker: str) -> list[tuple[str, str, str]]:
    cues = []
    for seg in segments:
        text = cue_text(str(seg["text"]))
        if text:
            start = float(seg["start"])
            end = max(float(seg["end"]), start)
            cues.append((timestamp(start, marker), timestamp(end, marker), text))
    return cues


def srt(segments: Iterable[Mapping[str, Any]]) -> str:
    """SubRip text of segments with `start`, `end` (seconds) and `text`."""
    return "".join(f"{i}\n{start} --> {end}\n{text}\n\n" for i, (start, end, text) in enumerate(_cues(segments, ","), 1))


def vtt(segments: Iterable[Mapping[str, Any]]) -> str:
    """WebVTT text of segments with `start`, `end` (seconds) and `text`."""
    return VTT_HEADER + "".join(f"{start} --> {end}\n{text}\n\n" for start, end, text in _cues(segments, "."))
