"""A realtime session (OpenAI's Realtime protocol over `/v1/realtime`): the input audio buffer and
its server VAD, the conversation, and at most one response at a time.

The pipeline overlaps its stages: VAD runs as audio arrives; a committed turn's transcript starts
at once (Whisper on the AudioEncoder) and the response awaits it only where the fusion mode reads
text; the answer is spoken sentence by sentence while the decoder writes (`realtime_response`).
Speech that starts during a response cancels it (barge-in) when `interrupt_response` is on: the
decoder and the speech synthesis stop, the audio not yet sent is dropped, and the conversation
keeps what was sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from modalities.audio.decode import resample
from serve.config import ChorusConfig
from serve.errors import ServiceError
from serve.protocol import ChatCompletionRequest
from serve.protocol.parse import check_untrusted, validation_error
from serve.protocol.realtime import CLIENT_EVENTS, PCM_RATE, ProtocolError, Session, TurnDetection, updated

from .realtime_items import Item, chat_messages, item_from_client, new_id, pcm_to_wav
from .realtime_outbox import Outbox
from .realtime_response import ResponseRun

log = logging.getLogger("ray.serve.chorus.realtime")
BYTES_PER_MS = PCM_RATE * 2 // 1000  # 48: 24 kHz, 16-bit mono
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less than 100 ms of audio
# Whisper starts on a pause this long inside speech, before the VAD's silence_duration_ms says the
# turn is over: if the pause does end it, the transcript is (nearly) ready when the turn is committed;
# if the caller goes on, the guess is dropped. Shorter pauses (between words) start nothing.
SPECULATE_AFTER_MS = 150


def silero_vad(detection: TurnDetection) -> Any:
    """Silero's streaming turn detector with a session's settings (loaded where first used)."""
    from modalities.speech.vad import StreamingVad

    return StreamingVad(
        threshold=detection.threshold,
        prefix_padding_ms=detection.prefix_padding_ms,
        silence_duration_ms=detection.silence_duration_ms,
    )


class RealtimeSession:
    def __init__(
        self,
        *,
        config: ChorusConfig,
        model: str,
        outbox: Outbox,
        chat: Any,  # ChatService
        speech: Any,  # SpeechService
        transcribe: Callable[[bytes], Awaitable[str]] | None,
        vad_factory: Callable[[TurnDetection], Any] | None,
    ) -> None:
        self.config, self.limits = config, config.realtime
        self.out, self.chat, self.speech = outbox, chat, speech
        self.transcribe, self.vad_factory = transcribe, vad_factory
        voice = config.speech.default_voice if config.speech is not None else "alloy"
        modalities = ["audio"] if speech.enabled else ["text"]
        vad = config.speech.vad if config.speech is not None else None
        detection = TurnDetection(**vad.model_dump()) if vad is not None and vad_factory is not None else None
        self.session = Session(id=new_id("sess"), model=model, voice=voice, output_modalities=modalities, turn_detection=detection)
        self.items: list[Item] = []
        self.buffer = bytearray()  # 24 kHz s16le since `buffer_start_ms`
        self.buffer_start_ms = 0
        self.audio_ms = 0  # audio received in the session
        self.vad = None
        self.vad_origin_ms = 0
        self.speech_start_ms: int | None = None
        self.pending_item_id: str | None = None
        self.run: ResponseRun | None = None
        self.task: asyncio.Task | None = None
        self.background: set[asyncio.Task] = set()
        self.last_run: ResponseRun | None = None
        self.guess: tuple[int, int, asyncio.Task] | None = None  # (turn start, pause start, its transcript)
        self._reset_vad()

    # --- the socket's side -----------------------------------------------------------------

    def created(self) -> None:
        self.out.put({"type": "session.created", "session": self.session.public()})

    async def handle(self, text: str | bytes) -> None:
        """One client event; a refusal becomes an `error` event (the session goes on)."""
        event_id = None
        try:
            try:
                event = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as err:
                raise ProtocolError("the event is not valid JSON", code="invalid_json") from err
            if not isinstance(event, dict):
                raise ProtocolError("an event must be a JSON object", code="invalid_event")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            check_untrusted(event)  # depth and Unicode, as every HTTP route checks its body
            kind = event.get("type")
            if kind not in CLIENT_EVENTS:
                raise ProtocolError(f"unknown event type {str(kind)[:64]!r}; known: {', '.join(CLIENT_EVENTS)}", code="unknown_event", param="type")
            await getattr(self, "_on_" + kind.replace(".", "_"))(event)
        except ProtocolError as err:
            self._error(err.message, err.code, err.param, event_id)
        except ServiceError as err:
            self._error(err.message, err.code or "invalid_value", err.param, event_id)

    def _error(self, message: str, code: str, param: str | None = None, event_id: str | None = None) -> None:
        error = {"type": "invalid_request_error", "code": code, "message": message, "param": param, "event_id": event_id}
        self.out.put({"type": "error", "error": error})

    async def close(self) -> None:
        """The socket closed: stop the response and every task of the session at once."""
        if self.task is not None:
            self.task.cancel()
        for task in list(self.background):
            task.cancel()
        self.buffer = bytearray()
        self.out.close()

    # --- session ---------------------------------------------------------------------------

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        session = updated(self.session, event.get("session"))
        if session.speaks():
            if not self.speech.enabled:
                raise ProtocolError("audio output needs speech synthesis, which this deployment has not configured", param="session.output_modalities")
            self.speech.check_voice(session.voice, "session.audio.output.voice")
        if session.turn_detection is not None and self.vad_factory is None:
            raise ProtocolError("server_vad is not available here; set turn_detection to null", param="session.audio.input.turn_detection")
        vad_changed = session.turn_detection != self.session.turn_detection
        self.session = session
        if vad_changed:
            self._reset_vad()
        self.out.put({"type": "session.updated", "session": session.public()})

    # --- input audio -------------------------------------------------------------------------

    def _reset_vad(self) -> None:
        detection = self.session.turn_detection
        self.vad = self.vad_factory(detection) if detection is not None and self.vad_factory is not None else None
        self.vad_origin_ms = self.audio_ms
        self.speech_start_ms = None
        self.guess = None

    async def _on_input_audio_buffer_append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ProtocolError("audio must be a base64 string", param="audio")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except ValueError as err:  # binascii.Error, or non-ASCII text
            raise ProtocolError("audio is not valid base64", param="audio") from err
        if len(pcm) % 2:
            raise ProtocolError("audio must be whole 16-bit samples (an even number of bytes)", param="audio")
        if len(self.buffer) + len(pcm) > self.limits.max_buffer_s * 1000 * BYTES_PER_MS:
            raise ProtocolError(
                f"the input audio buffer is full ({self.limits.max_buffer_s:g} s); commit or clear it",
                code="input_audio_buffer_full", param="audio",
            )
        self.buffer += pcm
        self.audio_ms += len(pcm) // BYTES_PER_MS
        if self.vad is not None and pcm:
            await self._detect(pcm)

    async def _detect(self, pcm: bytes) -> None:
        samples = resample(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, PCM_RATE)
        events = await asyncio.to_thread(self.vad.feed, samples)
        detection = self.session.turn_detection
        assert detection is not None
        for vad_event in events:
            at = self.vad_origin_ms + vad_event.at_ms
            if vad_event.kind == "speech_started":
                self.speech_start_ms = max(self.buffer_start_ms, at - detection.prefix_padding_ms)
                self.pending_item_id = new_id("item")
                if self.run is not None and detection.interrupt_response:
                    self._cancel_response("turn_detected")
                self.out.put({"type": "input_audio_buffer.speech_started", "audio_start_ms": self.speech_start_ms, "item_id": self.pending_item_id})
            elif self.speech_start_ms is not None:
                await self._speech_stopped(at)
        self._guess_the_end()
        if self.speech_start_ms is not None and self.audio_ms - self.speech_start_ms > self.limits.max_turn_s * 1000:
            # a caller who never pauses: the turn is cut here, as if they had, and listening goes on
            await self._speech_stopped(self.audio_ms)
            self._reset_vad()
        elif self.speech_start_ms is None:
            self._trim_silence(detection.prefix_padding_ms)

    def _guess_the_end(self) -> None:
        """Start Whisper on the turn so far when a pause inside it has lasted SPECULATE_AFTER_MS."""
        since = getattr(self.vad, "silence_since_ms", None)
        if self.transcribe is None or self.speech_start_ms is None or since is None:
            return
        end = self.vad_origin_ms + since
        if self.audio_ms - end < SPECULATE_AFTER_MS or (self.guess is not None and self.guess[:2] == (self.speech_start_ms, end)):
            return
        wav = pcm_to_wav(self._peek(self.speech_start_ms, end))
        self.guess = (self.speech_start_ms, end, self._spawn(self.transcribe(wav)))

    async def _speech_stopped(self, at_ms: int) -> None:
        item_id = self.pending_item_id or new_id("item")
        self.out.put({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": at_ms, "item_id": item_id})
        start = self.speech_start_ms if self.speech_start_ms is not None else self.buffer_start_ms
        guess, self.guess = self.guess, None
        pcm = self._take(start, at_ms)
        self.speech_start_ms, self.pending_item_id = None, None
        # the pause Whisper started on is the one that ended the turn: its transcript is this turn's
        self._commit(pcm, item_id, guess[2] if guess is not None and guess[:2] == (start, at_ms) else None)
        detection = self.session.turn_detection
        if detection is not None and detection.create_response and self.run is None:
            self._start_response({})

    def _span(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """Byte offsets in the buffer of two session positions (clipped to it)."""
        a = max(0, (start_ms - self.buffer_start_ms) * BYTES_PER_MS)
        return a, max(a, min(len(self.buffer), (end_ms - self.buffer_start_ms) * BYTES_PER_MS))

    def _peek(self, start_ms: int, end_ms: int) -> bytes:
        """Audio between two session positions, left in the buffer."""
        a, b = self._span(start_ms, end_ms)
        return bytes(self.buffer[a:b])

    def _take(self, start_ms: int, end_ms: int) -> bytes:
        """Audio between two session positions; the buffer keeps what follows `end_ms`."""
        a, b = self._span(start_ms, end_ms)
        pcm = bytes(self.buffer[a:b])
        del self.buffer[:b]
        self.buffer_start_ms += b // BYTES_PER_MS
        return pcm

    def _trim_silence(self, keep_ms: int) -> None:
        """Between turns the buffer keeps only the padding a next turn may start with."""
        excess = len(self.buffer) - (keep_ms + 1000) * BYTES_PER_MS
        if excess > 0:
            excess -= excess % BYTES_PER_MS
            del self.buffer[:excess]
            self.buffer_start_ms += excess // BYTES_PER_MS

    async def _on_input_audio_buffer_commit(self, event: dict[str, Any]) -> None:
        if len(self.buffer) < MIN_COMMIT_MS * BYTES_PER_MS:
            raise ProtocolError(
                f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio", code="input_audio_buffer_commit_empty"
            )
        item_id = self.pending_item_id or new_id("item")
        pcm = self._take(self.buffer_start_ms, self.audio_ms)
        self._reset_vad()
        self._commit(pcm, item_id)

    async def _on_input_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        self._take(self.buffer_start_ms, self.audio_ms)
        self._reset_vad()
        self.out.put({"type": "input_audio_buffer.cleared"})

    def _commit(self, pcm: bytes, item_id: str, transcript: asyncio.Task | None = None) -> None:
        previous = self.items[-1].id if self.items else None
        item = Item(item_id, "message", role="user", content=[{"type": "input_audio", "transcript": None}], audio=pcm_to_wav(pcm))
        self.items.append(item)
        self.out.put({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id})
        self._added(item, previous)
        self._transcribe_later(item, len(pcm) / (BYTES_PER_MS * 1000), transcript)

    def _added(self, item: Item, previous: str | None) -> None:
        self.out.put({"type": "conversation.item.added", "previous_item_id": previous, "item": item.public()})
        self.out.put({"type": "conversation.item.done", "previous_item_id": previous, "item": item.public()})

    def _transcribe_later(self, item: Item, seconds: float, started: asyncio.Task | None = None) -> None:
        """Whisper starts on a committed turn at once (or has started on it already: `started`); the
        response awaits it where it needs text."""
        if self.transcribe is None or item.audio is None:
            return
        wanted = self.session.transcription is not None

        async def run() -> str:
            try:
                text = (await (started if started is not None else self.transcribe(item.audio))).strip()
            except Exception as err:
                log.warning("realtime transcription failed: %s", type(err).__name__)
                if wanted:
                    error = {"type": "transcription_error", "code": "transcription_failed", "message": "transcription failed"}
                    self.out.put({"type": "conversation.item.input_audio_transcription.failed", "item_id": item.id, "content_index": 0, "error": error})
                return ""
            item.content[0]["transcript"] = text
            if wanted:
                self.out.put({
                    "type": "conversation.item.input_audio_transcription.completed", "item_id": item.id, "content_index": 0,
                    "transcript": text, "usage": {"type": "duration", "seconds": round(seconds, 3)},
                })
            return text

        item.transcript_task = self._spawn(run())

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a dropped guess's failure is not news
        return task

    # --- conversation ------------------------------------------------------------------------

    async def _on_conversation_item_create(self, event: dict[str, Any]) -> None:
        item = item_from_client(event.get("item"))
        if any(existing.id == item.id for existing in self.items):
            raise ProtocolError(f"an item with id {item.id!r} exists", param="item.id")
        previous = event.get("previous_item_id")
        if previous is None:
            at = len(self.items)
        elif previous == "root":
            at = 0
        else:
            ids = [existing.id for existing in self.items]
            if previous not in ids:
                raise ProtocolError("previous_item_id names no item of this conversation", param="previous_item_id")
            at = ids.index(previous) + 1
        self.items.insert(at, item)
        if item.audio is not None:
            self._transcribe_later(item, 0.0)
        self._added(item, self.items[at - 1].id if at else None)

    async def _on_conversation_item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        for i, item in enumerate(self.items):
            if item.id == item_id:
                del self.items[i]
                self.out.put({"type": "conversation.item.deleted", "item_id": item_id})
                return
        raise ProtocolError("item_id names no item of this conversation", param="item_id")

    # --- responses ---------------------------------------------------------------------------

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        if self.run is not None:
            raise ProtocolError("the conversation already has an active response", code="conversation_already_has_active_response")
        overrides = event.get("response") or {}
        if not isinstance(overrides, dict):
            raise ProtocolError("response must be an object", param="response")
        self._start_response(overrides)

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        if self.run is None:
            raise ProtocolError("no response is in progress", code="response_cancel_not_active")
        self._cancel_response("client_cancelled")

    async def _on_output_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        response_id = self.run.id if self.run is not None else None
        if self.run is not None:
            self._cancel_response("client_cancelled")
        self.out.put({"type": "output_audio_buffer.cleared", "response_id": response_id})

    def _cancel_response(self, reason: str) -> None:
        run, task = self.run, self.task
        if run is None or task is None:
            return
        run.reason = reason
        task.cancel()
        self.out.purge_audio(run.id)  # audio of this response not sent yet never will be
        self.run = None

    def _start_response(self, overrides: dict[str, Any]) -> None:
        applied = ("instructions", "tools", "tool_choice", "temperature", "max_output_tokens", "output_modalities", "modalities", "audio", "voice")
        session = updated(self.session, {k: v for k, v in overrides.items() if k in applied}, "response")
        if session.speaks():
            self.speech.check_voice(session.voice, "response.audio.output.voice")
        audio_as_text = self.config.fusion.audio_mode == "transcript"
        run = ResponseRun(
            send=self.out.put,
            chunks=lambda: self._chunks(run, session, audio_as_text),
            speak=(lambda sentence: self.speech.stream(sentence, session.voice, session.speed)) if session.speaks() else None,
            modalities=list(session.output_modalities),
            conversation=self.items,
        )
        self.run = run
        self.task = asyncio.create_task(self._run(run))

    async def _run(self, run: ResponseRun) -> None:
        try:
            await run.run()
        except asyncio.CancelledError:
            pass
        finally:
            if self.run is run:
                self.run = None
            self.last_run = run

    async def _chunks(self, run: ResponseRun, session: Session, audio_as_text: bool) -> Any:
        messages = await chat_messages(self.items, session.instructions, audio_as_text)
        run.timings["context_ready_s"] = time.perf_counter() - run.started  # the turn's transcript waited for
        body: dict[str, Any] = {"model": self.config.served_model_name, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
        if session.tools:
            body["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in session.tools]
            choice = session.tool_choice
            body["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}} if isinstance(choice, dict) else choice
        if session.temperature is not None:
            body["temperature"] = session.temperature
        if isinstance(session.max_output_tokens, int):
            body["max_completion_tokens"] = session.max_output_tokens
        try:
            req = ChatCompletionRequest.model_validate(body)
        except Exception as err:
            errors = getattr(err, "errors", None)
            raise (validation_error(errors(), body) if callable(errors) else err) from err
        generation = await self.chat.start(req)
        run.stop_decoder = generation.cancel
        _first, events = await self.chat.first_event(generation)
        return self.chat.chunks(generation, events, True, time.perf_counter(), None, run.id)
