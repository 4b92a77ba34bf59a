"""Spoken chat answers (`modalities: ["text", "audio"]`): the answer's text is spoken sentence by
sentence while it streams, and a follow-up may name an earlier spoken answer by its audio id.

OpenAI's shape: a spoken answer's text is `message.audio.transcript` (and `content` is null); its
audio is `message.audio.data` (base64 in the requested format). Streamed, the text arrives as
`delta.audio.transcript` pieces as the decoder writes them, and `delta.audio.data` pieces as each
sentence is synthesised (in the same order as the text, never holding it back); the finishing chunk
waits for the last sentence's audio. The transcripts of spoken answers are kept on this ingress
replica until `expires_at`, so that `{"role": "assistant", "audio": {"id": ...}}` in a follow-up
stands for what was said; an id this replica does not know is refused (400).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from modalities.speech.sentences import SentenceStream
from serve.errors import Internal, InvalidRequest, NotFound
from serve.protocol import ChatCompletionRequest

from .realtime_response import FIRST_CLAUSE_WORDS
from .speech import NO_SPEECH, SpeechService

log = logging.getLogger("ray.serve.chorus.spoken")
AUDIO_TTL_S = 3600  # how long an answer's audio id stands for its transcript (OpenAI keeps audio an hour)
MAX_REMEMBERED = 10_000
CHAT_FORMATS = {"pcm16": "pcm", "wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "opus"}  # chat's names → speech's

Payload = dict[str, Any] | str


def _audio_id() -> str:
    return f"audio_{uuid.uuid4().hex[:24]}"


class SpokenAnswers:
    def __init__(self, speech: SpeechService, ttl_s: float = AUDIO_TTL_S) -> None:
        self.speech = speech
        self.ttl_s = ttl_s
        self._said: OrderedDict[str, tuple[float, str]] = OrderedDict()  # audio id → (expires_at, transcript)

    # --- requests ----------------------------------------------------------------------------

    def check(self, req: ChatCompletionRequest) -> ChatCompletionRequest:
        """Refuse what cannot be spoken; replace earlier answers' audio ids by what they said."""
        if req.spoken():
            if not self.speech.enabled:
                raise NotFound(NO_SPEECH, code="speech_not_configured")
            assert req.audio is not None
            self.speech.check_voice(req.audio.voice, "audio.voice")
            if req.audio.format not in CHAT_FORMATS:
                supported = ", ".join(CHAT_FORMATS)
                raise InvalidRequest(
                    f"audio.format {req.audio.format!r} cannot be encoded here; supported: {supported}",
                    param="audio.format",
                    code="unsupported_format",
                )
        if not any(m.audio is not None for m in req.messages):
            return req
        messages = []
        for i, message in enumerate(req.messages):
            if message.audio is not None:
                said = self._recall(message.audio.id)
                if said is None:
                    raise InvalidRequest(
                        f"messages.{i}.audio.id is unknown here or expired",
                        param=f"messages.{i}.audio.id",
                        code="invalid_value",
                    )
                text = message.content if isinstance(message.content, str) and message.content else said
                message = message.model_copy(update={"content": text, "audio": None})
            messages.append(message)
        return req.model_copy(update={"messages": messages})

    def remember(self, audio_id: str, transcript: str) -> int:
        expires_at = int(time.time() + self.ttl_s)
        self._said[audio_id] = (expires_at, transcript)
        while len(self._said) > MAX_REMEMBERED:
            self._said.popitem(last=False)
        return expires_at

    def _recall(self, audio_id: str) -> str | None:
        entry = self._said.get(audio_id)
        if entry is None or entry[0] < time.time():
            self._said.pop(audio_id, None)
            return None
        return entry[1]

    # --- answers -----------------------------------------------------------------------------

    async def complete(self, req: ChatCompletionRequest, payload: dict[str, Any]) -> dict[str, Any]:
        """Speak a whole answer: `message.audio` in the requested format; `content` moves to its transcript."""
        assert req.audio is not None
        message = payload["choices"][0]["message"]
        text = message.get("content")
        if not text:  # tool calls: nothing to say
            return payload
        fmt = CHAT_FORMATS[req.audio.format]
        stream = self.speech.stream(text, req.audio.voice, 1.0, fmt)
        audio = b"".join([chunk async for chunk in stream])
        audio_id = _audio_id()
        expires_at = self.remember(audio_id, text)
        message["content"] = None
        message["audio"] = {
            "id": audio_id,
            "data": base64.b64encode(audio).decode("ascii"),
            "expires_at": expires_at,
            "transcript": text,
        }
        return payload

    def chunks(
        self, req: ChatCompletionRequest, groups: AsyncIterator[list[Payload]], cancel: Any, request_id: str = "-"
    ) -> AsyncIterator[list[Payload]]:
        """Chat chunk groups with the text turned into `audio.transcript` deltas and the audio of each
        sentence added as `audio.data` deltas as soon as it is synthesised. Speech that fails ends the
        stream with an error payload and stops the generation (`cancel`)."""
        assert req.audio is not None
        return _SpokenStream(self, req.audio.voice, CHAT_FORMATS[req.audio.format], cancel, request_id).run(groups)


class _SpokenStream:
    """One streamed spoken answer: a task reads the text chunks (sentences to `sentences`), a task
    speaks the sentences in order; both put what is ready to send on `out`."""

    def __init__(self, answers: SpokenAnswers, voice: str, fmt: str, cancel: Any, request_id: str) -> None:
        self.answers, self.voice, self.fmt, self.cancel, self.request_id = answers, voice, fmt, cancel, request_id
        self.audio_id = _audio_id()
        self.out: asyncio.Queue[tuple[str, list[Payload] | None]] = asyncio.Queue()
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self.template: dict[str, Any] = {}
        self.said: list[str] = []
        self.held: list[Payload] = []  # the finishing chunk, usage, errors and [DONE]: after the last audio

    def _audio_chunk(self, audio: dict[str, Any]) -> dict[str, Any]:
        delta = {"audio": {"id": self.audio_id, **audio}}
        return {**self.template, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}

    def _rewrite(self, payload: Payload, splitter: SentenceStream) -> bool:
        """Turn one payload's text into a transcript delta; True where it must wait for the audio."""
        if isinstance(payload, str) or "error" in payload or not payload.get("choices"):
            return True
        if not self.template:
            self.template.update({k: v for k, v in payload.items() if k not in ("choices", "usage", "chorus")})
        choice = payload["choices"][0]
        text = choice["delta"].get("content")
        if text == "":  # the role chunk's empty content: a spoken answer's text is its transcript
            choice["delta"]["content"] = None
        if text:
            self.said.append(text)
            choice["delta"]["content"] = None
            choice["delta"]["audio"] = {"id": self.audio_id, "transcript": text}
            for sentence in splitter.feed(text):
                self.sentences.put_nowait(sentence)
        return bool(choice.get("finish_reason"))

    async def _read_text(self, groups: AsyncIterator[list[Payload]]) -> None:
        splitter = SentenceStream(first_clause_words=FIRST_CLAUSE_WORDS)
        try:
            async for group in groups:
                now = []
                for payload in group:
                    (self.held if self._rewrite(payload, splitter) else now).append(payload)
                if now:
                    self.out.put_nowait(("text", now))
            for sentence in splitter.flush():
                self.sentences.put_nowait(sentence)
        finally:
            self.sentences.put_nowait(None)

    async def _speak(self) -> None:
        try:
            while (sentence := await self.sentences.get()) is not None:
                async for chunk in self.answers.speech.stream(sentence, self.voice, 1.0, self.fmt):
                    data = base64.b64encode(chunk).decode("ascii")
                    self.out.put_nowait(("audio", [self._audio_chunk({"data": data})]))
        except Exception:
            log.exception("speech failed request_id=%s", self.request_id)
            self.out.put_nowait(("failed", None))
            return
        self.out.put_nowait(("end", None))

    async def run(self, groups: AsyncIterator[list[Payload]]) -> AsyncIterator[list[Payload]]:
        reader = asyncio.create_task(self._read_text(groups))
        speaker = asyncio.create_task(self._speak())
        try:
            while True:
                kind, group = await self.out.get()
                if kind == "failed":
                    self.cancel()
                    yield [Internal(f"speech synthesis failed (request id {self.request_id})", code="server_error").body(), "[DONE]"]
                    return
                if kind == "end":
                    break
                assert group is not None
                yield group
            await reader  # raises what the text stream raised
            final: list[Payload] = []
            if self.said and self.template:
                expires_at = self.answers.remember(self.audio_id, "".join(self.said))
                final.append(self._audio_chunk({"expires_at": expires_at, "transcript": ""}))
            yield final + self.held
        finally:
            for task in (reader, speaker):
                task.cancel()
