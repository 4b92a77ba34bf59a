"""Token ids → text deltas, streamed: incremental decoding and stop-string hold-back.

Two small pieces a streaming loop chains:

- `IncrementalDetokenizer` turns one new token id at a time into the text it adds. Byte-level BPE
  splits a multi-byte character (é, an emoji, CJK) over several tokens; decoding a lone piece gives
  U+FFFD, so text is released only once it decodes cleanly. Decoding works on a short sliding
  window, not the whole sequence, so each step costs O(1) in the length generated.
- `StopStringFilter` holds back any tail that could still grow into a stop string, and cuts the
  text at the first stop string found, so a stop string never reaches the client, not even in part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"  # what a decoder emits for an incomplete UTF-8 sequence


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Stateful decoder for one generated sequence (the prompt is not part of it)."""

    def __init__(self, tokenizer: Decoder, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        # Text of ids[prefix:read] has been released; ids[read:] are pending. Decoding from
        # `prefix` rather than `read` keeps a token's context (e.g. a leading-space marker).
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is still partial)."""
        self._ids.append(token_id)
        released = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(released) or text.endswith(REPLACEMENT_CHAR):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(released) :]

    def flush(self) -> str:
        """Whatever is still pending at the end of generation (may contain U+FFFD if cut mid-character)."""
        released = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(released) :] if text.startswith(released) else ""


class StopStringFilter:
    """Releases text that can no longer be part of a stop string; detects the first stop string."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(stop)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add decoded text; return what is safe to release. Sets `stopped` once a stop string appears."""
        if self.stopped:
            return ""
        if not self._stop:
            return text
        buffer = self._held + text
        hits = [index for index in (buffer.find(s) for s in self._stop) if index >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buffer[: min(hits)]
        keep = self._longest_partial_match(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation the held tail is plain text: no stop string completed it."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial_match(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stop:
            for length in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:length]):
                    longest = length
                    break
        return longest
