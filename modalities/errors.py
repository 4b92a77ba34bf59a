"""The one exception type for bad client input to the runtimes.

Every runtime raises `MediaError` (a `ValueError`) for input the client got wrong: undecodable or
truncated bytes, a format outside the allowlist, audio over the duration limit, an image over the
pixel limit. The message is short, says what was wrong and never echoes the input bytes. The serving
layer maps it to HTTP 400; anything else escaping a runtime is our fault (5xx).
"""

from __future__ import annotations


class MediaError(ValueError):
    """Client-supplied media (or generation input) that cannot be processed.

    `param` names the offending request field where the caller knows it (e.g. "file").
    """

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_media") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
