"""Streaming bookkeeping for the chat service: token counts and timing, and the chunk payloads."""

from __future__ import annotations

import time
from typing import Any

from serve import metrics
from serve.deployments.contracts import DecodeEvent
from serve.protocol import ChatCompletionChunk, ChunkChoice, Delta, Usage
from serve.protocol.chat import ChoiceLogprobs

from .structured import delta_dicts

ROUTE = "/v1/chat/completions"


class Counts:
    """What a stream has seen so far: first token time, token counts, finish reason."""

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.prompt_tokens = self.completion_tokens = 0
        self.finish = "stop"

    def see(self, event: DecodeEvent) -> None:
        at = time.perf_counter()
        if self.first_at is None:
            self.first_at = at
        elif self.last_at is not None:
            metrics.INTER_TOKEN.observe(at - self.last_at, tags={"route": ROUTE})
        self.last_at = at
        self.prompt_tokens, self.completion_tokens = event.prompt_tokens, event.completion_tokens

    def usage(self) -> Usage:
        total = self.prompt_tokens + self.completion_tokens
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, total_tokens=total)


class ChunkMaker:
    def __init__(self, generation: Any, model: str, include_usage: bool) -> None:
        self.generation, self.model, self.include_usage = generation, model, include_usage

    def __call__(
        self,
        delta: Delta,
        finish: str | None = None,
        usage: Usage | None = None,
        empty: bool = False,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        entries = None if logprobs is None else ChoiceLogprobs(content=logprobs)
        choices = [] if empty else [ChunkChoice(delta=delta, finish_reason=finish, logprobs=entries)]  # type: ignore[arg-type]
        g = self.generation
        payload = ChatCompletionChunk(id=g.completion_id, created=g.created, model=self.model, choices=choices, usage=usage).model_dump()
        for choice in payload["choices"]:  # OpenAI sends only the delta fields that are set
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            if delta.tool_calls:
                choice["delta"]["tool_calls"] = delta_dicts(delta.tool_calls)
        if not self.include_usage:  # `usage` appears on chunks only when the client asked for it
            payload.pop("usage")
        return payload


def record_timing(started: float, first: float | None, completion_tokens: int) -> None:
    route = {"route": ROUTE}
    if first is not None:
        metrics.TTFT.observe(first - started, tags=route)
        elapsed = time.perf_counter() - first
        if completion_tokens > 1 and elapsed > 0:
            metrics.TOKENS_PER_S.observe((completion_tokens - 1) / elapsed, tags=route)
