"""Sentences out of streamed text: what speech synthesis speaks one at a time while an answer streams.

Dependency-free (the light ingress uses it). A sentence ends at `.`, `!`, `?` or `…` (with any closing
quotes or brackets) followed by whitespace, or at a line break; not after a number's decimal point
("3.50"), a single initial ("J. Smith") or a common abbreviation ("e.g.", "Mr."). A sentence still open
past `max_chars` is cut at its last comma, then its last space, so speech never waits on a run-on.
"""

from __future__ import annotations

import re

__all__ = ["ABBREVIATIONS", "SentenceStream", "split_sentences"]

ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e approx dept no inc ltd co corp fig jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_END = re.compile(r"([.!?…]+[\"'”’)\]]*)(\s+)|(\n+)")
MAX_CHARS = 400


def _is_boundary(text: str, end: int) -> bool:
    """Whether the terminal punctuation ending at `end` (exclusive, `text[end-1]` is the mark) ends a sentence."""
    head = text[:end].rstrip("\"'”’)]")
    if not head.endswith("."):
        return True  # ! ? … always end one
    word = head[:-1].rsplit(None, 1)[-1] if head[:-1].strip() else ""
    word = word.lstrip("\"'“‘([").lower()
    if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    return True


class SentenceStream:
    """Feed text as it streams; take each sentence as soon as it is complete."""

    def __init__(self, max_chars: int = MAX_CHARS) -> None:
        self.max_chars = max_chars
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                break
            piece, self._buf = self._buf[:cut], self._buf[cut:]
            if piece.strip():
                out.append(piece.strip())
        return out

    def flush(self) -> list[str]:
        """The rest (the answer ended mid-sentence)."""
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []

    def _next_cut(self) -> int | None:
        for match in _END.finditer(self._buf):
            if match.group(3) is not None:
                return match.end()
            if _is_boundary(self._buf, match.end(1)):
                return match.end()
        if len(self._buf) > self.max_chars:
            window = self._buf[: self.max_chars]
            for sep in (", ", "; ", " "):
                at = window.rfind(sep)
                if at > 0:
                    return at + len(sep)
            return self.max_chars
        return None


def split_sentences(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """`text` cut into the sentences `SentenceStream` would give, all at once."""
    stream = SentenceStream(max_chars)
    return stream.feed(text) + stream.flush()
