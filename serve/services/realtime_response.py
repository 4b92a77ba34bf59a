"""One realtime response: the chat path's streamed answer as Realtime events, spoken sentence by
sentence while the text streams (a speaker task synthesises each sentence as soon as the decoder
completes it), cancelled at once by a barge-in or `response.cancel`.

What the conversation keeps of a cancelled response is what was actually sent: the text of the
sentences whose audio went out (audio mode) or the text deltas sent (text mode), never what the
decoder had written beyond that.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from modalities.speech.sentences import SentenceStream

from .realtime_items import Item, new_id

log = logging.getLogger("ray.serve.chorus.realtime")
Send = Callable[[dict[str, Any]], None]
# The first piece spoken may end at a clause mark once it has this many words: the caller hears the
# answer start at the first natural pause rather than at the end of a long first sentence.
FIRST_CLAUSE_WORDS = 4


class ResponseRun:
    """Runs one response: `run()` in a task; `cancel(reason)` from the session."""

    def __init__(
        self,
        *,
        send: Send,
        chunks: Callable[[], Awaitable[Any]],  # () → the chat service's chunk groups, started
        speak: Callable[[str], Any] | None,  # sentence → the Speech deployment's PCM stream; None: text only
        modalities: list[str],
        conversation: list[Item],
        on_audio_sent: Callable[[str, int], None] | None = None,  # (response id, bytes) as audio leaves
    ) -> None:
        self.id = new_id("resp")
        self.send, self.chunks, self.speak = send, chunks, speak
        self.modalities = modalities
        self.conversation = conversation
        self.on_audio_sent = on_audio_sent
        self.status, self.reason = "in_progress", None
        self.error: dict[str, Any] | None = None
        self.items: list[Item] = []
        self.message: Item | None = None
        self.written: list[str] = []  # text the decoder wrote
        self.spoken: list[str] = []  # text whose audio (or, text only, whose delta) went out
        self.usage = {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0}
        self.calls: dict[int, Item] = {}
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self._speaker: asyncio.Task | None = None
        self._stream: Any = None  # the Speech stream being read (cancelled with the response)
        self.stop_decoder: Callable[[], None] | None = None  # set once the decoder is called

    # --- events ------------------------------------------------------------------------------

    def _ids(self, item: Item, index: int) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": item.id, "output_index": index, "content_index": 0}

    def _public(self) -> dict[str, Any]:
        details = None
        if self.status in ("cancelled", "incomplete"):
            details = {"type": self.status, "reason": self.reason}
        elif self.status == "failed":
            details = {"type": "failed", "error": self.error}
        return {
            "object": "realtime.response", "id": self.id, "status": self.status, "status_details": details,
            "output": [item.public() for item in self.items], "output_modalities": self.modalities,
            "conversation_id": None, "usage": dict(self.usage), "metadata": None,
            # our extension: where this response's time went, in seconds from response.created
            "chorus": {"timings": {k: round(v, 4) for k, v in self.timings.items()}},
        }

    def _open_message(self) -> Item:
        if self.message is None:
            audio = "audio" in self.modalities
            self.message = Item(new_id("item"), "message", role="assistant", status="in_progress")
            self.items.append(self.message)
            self.conversation.append(self.message)
            index = len(self.items) - 1
            self.send({"type": "response.output_item.added", "response_id": self.id, "output_index": index, "item": self.message.public()})
            self.send({"type": "conversation.item.added", "item": self.message.public()})
            part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
            self.send({"type": "response.content_part.added", **self._ids(self.message, index), "part": part})
        return self.message

    def _text(self, text: str, splitter: SentenceStream) -> None:
        message = self._open_message()
        self.written.append(text)
        index = self.items.index(message)
        self.timings.setdefault("first_text_s", time.perf_counter() - self.started)
        if "audio" in self.modalities:
            self.send({"type": "response.output_audio_transcript.delta", **self._ids(message, index), "delta": text})
            for sentence in splitter.feed(text):
                self.timings.setdefault("first_sentence_s", time.perf_counter() - self.started)
                self._sentences.put_nowait(sentence)
        else:
            self.spoken.append(text)
            self.send({"type": "response.output_text.delta", **self._ids(message, index), "delta": text})

    def _tool_delta(self, call: dict[str, Any]) -> None:
        index = call.get("index", 0)
        item = self.calls.get(index)
        function = call.get("function") or {}
        if item is None:
            item = Item(new_id("item"), "function_call", call_id=call.get("id") or new_id("call"), name=function.get("name") or "", arguments="", status="in_progress")
            self.calls[index] = item
            self.items.append(item)
            self.conversation.append(item)
            self.send({"type": "response.output_item.added", "response_id": self.id, "output_index": len(self.items) - 1, "item": item.public()})
            self.send({"type": "conversation.item.added", "item": item.public()})
        piece = function.get("arguments") or ""
        if piece:
            item.arguments = (item.arguments or "") + piece
            ids = {"response_id": self.id, "item_id": item.id, "output_index": self.items.index(item), "call_id": item.call_id}
            self.send({"type": "response.function_call_arguments.delta", **ids, "delta": piece})

    # --- the run -----------------------------------------------------------------------------

    async def _speak_sentences(self) -> None:
        """Speak each sentence as it completes; audio deltas go out as each sentence's PCM arrives."""
        while (sentence := await self._sentences.get()) is not None:
            message = self.message
            assert message is not None and self.speak is not None
            index = self.items.index(message)
            self._stream = self.speak(sentence)
            async for pcm in self._stream:
                self.timings.setdefault("first_audio_s", time.perf_counter() - self.started)
                self.send({"type": "response.output_audio.delta", **self._ids(message, index), "delta": base64.b64encode(pcm).decode("ascii")})
                if self.on_audio_sent is not None:
                    self.on_audio_sent(self.id, len(pcm))
            self._stream = None
            self.spoken.append(sentence + " ")

    async def run(self) -> None:
        self.send({"type": "response.created", "response": self._public()})
        splitter = SentenceStream(first_clause_words=FIRST_CLAUSE_WORDS)
        if "audio" in self.modalities:
            self._speaker = asyncio.create_task(self._speak_sentences())
        try:
            groups = await self.chunks()
            self.timings["first_token_s"] = time.perf_counter() - self.started
            async for group in groups:
                for payload in group:
                    self._payload(payload, splitter)
            for sentence in splitter.flush():
                self.timings.setdefault("first_sentence_s", time.perf_counter() - self.started)
                self._sentences.put_nowait(sentence)
            self._sentences.put_nowait(None)
            if self._speaker is not None:
                await self._speaker
            if self.status == "in_progress":
                self.status = "completed"
        except asyncio.CancelledError:
            self.status = "cancelled"
            self.reason = self.reason or "client_cancelled"
            raise
        except Exception as err:  # a refusal or a fault: the response fails, the session lives on
            log.warning("realtime response failed: %s", type(err).__name__)
            self.status = "failed"
            error = getattr(err, "body", lambda: {"error": {"type": "server_error", "message": "internal error"}})()["error"]
            self.error = {"code": "server_error" if error.get("type") == "server_error" else "invalid_value", **{k: v for k, v in error.items() if v is not None}}
            self.send({"type": "error", "error": {"param": None, "event_id": None, **self.error}})
        finally:
            self._stop_speaking()
            if self.status != "completed" and self.stop_decoder is not None:
                self.stop_decoder()  # frees the decoder slot at once
            self._finish()

    def _payload(self, payload: Any, splitter: SentenceStream) -> None:
        if isinstance(payload, str):
            return  # [DONE]
        if "error" in payload:
            raise _StreamError(payload)
        if payload.get("usage"):
            usage = payload["usage"]
            self.usage = {"total_tokens": usage["total_tokens"], "input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self._text(delta["content"], splitter)
            for call in delta.get("tool_calls") or []:
                self._tool_delta(call)
            if choice.get("finish_reason") == "length":
                self.status, self.reason = "incomplete", "max_output_tokens"
            elif choice.get("finish_reason") == "content_filter":
                self.status, self.reason = "incomplete", "content_filter"

    def _stop_speaking(self) -> None:
        if self._speaker is not None and not self._speaker.done():
            self._speaker.cancel()
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def _finish(self) -> None:
        """The closing events; the message keeps what was sent."""
        message = self.message
        if message is not None:
            index = self.items.index(message)
            said = "".join(self.spoken).strip() if self.status == "cancelled" else "".join(self.written)
            if "audio" in self.modalities:
                message.content = [{"type": "output_audio", "transcript": said}]
                self.send({"type": "response.output_audio.done", **self._ids(message, index)})
                self.send({"type": "response.output_audio_transcript.done", **self._ids(message, index), "transcript": said})
                part = {"type": "audio", "transcript": said}
            else:
                message.content = [{"type": "output_text", "text": said}]
                self.send({"type": "response.output_text.done", **self._ids(message, index), "text": said})
                part = {"type": "text", "text": said}
            self.send({"type": "response.content_part.done", **self._ids(message, index), "part": part})
            message.status = "completed" if self.status == "completed" else "incomplete"
        for item in self.calls.values():
            item.status = "completed" if self.status == "completed" else "incomplete"
            ids = {"response_id": self.id, "item_id": item.id, "output_index": self.items.index(item), "call_id": item.call_id}
            self.send({"type": "response.function_call_arguments.done", **ids, "name": item.name, "arguments": item.arguments or ""})
        for index, item in enumerate(self.items):
            self.send({"type": "response.output_item.done", "response_id": self.id, "output_index": index, "item": item.public()})
            self.send({"type": "conversation.item.done", "item": item.public()})
        self.timings["done_s"] = time.perf_counter() - self.started
        self.send({"type": "response.done", "response": self._public()})


class _StreamError(Exception):
    """An error payload inside the chat stream (a deadline, a decoder fault)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload["error"].get("message", "error"))
        self.payload = payload

    def body(self) -> dict[str, Any]:
        return self.payload
