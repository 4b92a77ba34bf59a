"""Sentences out of text, all at once or as it streams: what speech synthesis speaks one at a time.

Dependency-free (the light ingress uses it). A sentence ends at `.`, `!`, `?` or `…` (runs of them,
with any closing quotes or brackets) followed by whitespace, or at a line break; not inside a decimal
("3.50"), after a title ("Dr. Smith", matched with its capital so "the doctor said no. Then" still
splits), after a Latin abbreviation ("e.g.", any case) or an initial ("J. K. Rowling"), nor before a
lowercase word ("wait... what"). A sentence longer than `max_chars` is cut at its last clause mark
(, ; : —) in the second half of the window, else at its last space, so speech never waits on a run-on.
Streaming, a boundary is taken once the next word's first letter has arrived (it decides the rule
above); `flush` gives the rest when the text ends. With `first_clause_words`, the first piece may end
at a clause mark once it has that many words: a voice starts speaking sooner, at a natural pause.
"""

from __future__ import annotations

import re

__all__ = ["MAX_CHARS", "SentenceStream", "split_sentences"]

MAX_CHARS = 400
_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
_CLAUSE_END = re.compile(r"[,;:—]\s")
_TITLES = frozenset({"Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Jr", "Sr", "Mt", "Gen", "Sgt", "Capt", "Rev", "Hon"})
_LATIN = frozenset({"e.g", "i.e", "vs", "cf", "approx", "etc"})


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    nxt = text[match.end() : match.end() + 1]
    if nxt.islower():
        return False
    if match.group().rstrip().rstrip("\"'”’)]") != ".":
        return True  # ! ? … and runs like "?!" or "..." end a sentence before a capital
    before = text[: match.start()].split()
    word = before[-1].lstrip("(\"'“‘") if before else ""
    if word in _TITLES or word.lower() in _LATIN:
        return False
    return not (len(word) == 1 and word.isupper())


def _cut_long(text: str, max_chars: int) -> int:
    """Where to cut a sentence longer than `max_chars`."""
    window = text[: max_chars + 1]  # a mark right at the cap still counts
    clauses = [m.end() for m in _CLAUSE_END.finditer(window) if m.end() - 1 <= max_chars]
    if clauses and clauses[-1] - 1 > max_chars // 2:
        return clauses[-1] - 1
    space = window.rfind(" ")
    return space if space > 0 else max_chars


class SentenceStream:
    """Feed text as it streams; take each sentence as soon as it is complete."""

    def __init__(self, max_chars: int = MAX_CHARS, first_clause_words: int | None = None) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        self.max_chars = max_chars
        self.first_clause_words = first_clause_words
        self._buf = ""
        self._given = 0  # pieces given so far

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while (cut := self._next_cut()) is not None:
            piece, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip(" \t")
            if piece:
                out.append(piece)
                self._given += 1
        return out

    def flush(self) -> list[str]:
        """The rest, once the text has ended (cut where it is still too long)."""
        out = []
        while len(self._buf.strip()) > self.max_chars:
            self._buf = self._buf.strip()
            cut = _cut_long(self._buf, self.max_chars)
            out.append(self._buf[:cut].strip())
            self._buf = self._buf[cut:]
        rest, self._buf = self._buf.strip(), ""
        return [s for s in [*out, rest] if s]

    def _next_cut(self) -> int | None:
        buf = self._buf
        newline = buf.find("\n")
        for match in _END.finditer(buf):
            if newline != -1 and newline < match.start():
                break
            if match.end() == len(buf):
                break  # the next word has not arrived: its case decides
            if _ends_sentence(buf, match):
                return match.end()
        if newline != -1:
            return newline + 1
        if self.first_clause_words and not self._given:
            for match in _CLAUSE_END.finditer(buf):
                if match.end() < len(buf) and len(buf[: match.start()].split()) >= self.first_clause_words:
                    return match.end()
        if len(buf) > self.max_chars:
            return _cut_long(buf, self.max_chars)
        return None


def split_sentences(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """`text` in the sentences `SentenceStream` gives, all at once: in order, none empty, each at most
    `max_chars`."""
    stream = SentenceStream(max_chars)
    return stream.feed(text) + stream.flush()
