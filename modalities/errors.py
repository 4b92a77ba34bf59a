"""Exceptions for bad client input to the runtimes.

Every runtime raises `InputError` (a `ValueError`) for input the client got wrong; `MediaError` is
the media kind of it: undecodable or truncated bytes, a format outside the allowlist, audio over
the duration limit, an image over the pixel limit. The message is short, says what was wrong and
never echoes the input. The serving layer maps it to HTTP 400; anything else escaping a runtime is
our fault (5xx).
"""

from __future__ import annotations


class InputError(ValueError):
    """Client-supplied input (media, a prompt, generation parameters) that cannot be processed.

    `param` names the offending request field where the caller knows it (e.g. "file").
    """

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def __reduce__(self):  # Ray pickles replica exceptions: keep the keyword fields
        return (_rebuild, (type(self), self.message, self.param, self.code))


class MediaError(InputError):
    """Client-supplied media that cannot be processed."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_media") -> None:
        super().__init__(message, param=param, code=code)


def _rebuild(cls: type[InputError], message: str, param: str | None, code: str) -> InputError:
    return cls(message, param=param, code=code)
