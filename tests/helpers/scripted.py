"""A decoder deployment handle that answers from a script: for the chat and Responses services'
unit tests, without Ray or a model. A script holds text pieces, exceptions (raised there) and
`asyncio.Event`s (the answer waits there until the test sets them)."""

from __future__ import annotations

import asyncio
from typing import Any

from serve.deployments.contracts import DecodeEvent


class _Remote:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class _Stream:
    def __init__(self, events) -> None:
        self.events, self.cancelled = events, False

    def __aiter__(self):
        return self.events.__aiter__()

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedDecoder:
    """Answers every request with `script`: text pieces, then a finish; an exception instance in the
    script is raised at that point (a decoder that dies mid-answer)."""

    def __init__(self, script: list[Any], finish: str = "stop") -> None:
        self.script, self.finish = script, finish
        self.requests: list[Any] = []
        self.info = _Remote(self._info)
        self.generate = _Remote(self._generate)

    async def _info(self) -> dict[str, Any]:
        return {"projectors": [], "default_sampling": {}}

    def options(self, **_options: Any) -> ScriptedDecoder:
        return self

    def _generate(self, request) -> _Stream:
        self.requests.append(request)

        async def events():
            pieces = [p for p in self.script if isinstance(p, str)]
            for i, piece in enumerate(self.script):
                if isinstance(piece, BaseException):
                    raise piece
                if isinstance(piece, asyncio.Event):  # held until the test sets it
                    await piece.wait()
                    continue
                last = i == len(self.script) - 1
                yield DecodeEvent(piece, self.finish if last else None, prompt_tokens=7, completion_tokens=pieces.index(piece) + 1)

        return _Stream(events())
