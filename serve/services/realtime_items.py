"""Realtime conversation items: what a client may add, and how a session's items become the chat
messages one response is decoded from."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
import wave
from dataclasses import dataclass, field
from typing import Any

from serve.protocol.realtime import PCM_RATE, ProtocolError

MAX_ITEM_TEXT = 100_000


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def pcm_to_wav(pcm: bytes, rate: int = PCM_RATE) -> bytes:
    """24 kHz mono s16le → a WAV file (what the chat path's audio parts carry)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buf.getvalue()


@dataclass
class Item:
    """One conversation item. `content` parts keep the public shape; a user's audio keeps its WAV
    bytes (`audio`) until its transcript is known (`transcript`), never sent back to the client."""

    id: str
    type: str  # message | function_call | function_call_output
    role: str | None = None
    content: list[dict[str, Any]] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    status: str = "completed"
    audio: bytes | None = None
    transcript_task: Any = None  # asyncio.Task[str] while Whisper reads the audio

    def public(self) -> dict[str, Any]:
        base: dict[str, Any] = {"id": self.id, "object": "realtime.item", "type": self.type, "status": self.status}
        if self.type == "message":
            return {**base, "role": self.role, "content": [dict(part) for part in self.content]}
        if self.type == "function_call":
            return {**base, "call_id": self.call_id, "name": self.name, "arguments": self.arguments or ""}
        return {**base, "call_id": self.call_id, "output": self.output or ""}


_USER_PARTS = {"input_text", "input_audio"}
_ASSISTANT_PARTS = {"output_text", "output_audio", "text", "audio"}  # text/audio: beta names


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_ITEM_TEXT:
        raise ProtocolError(f"{param} must be a string of at most {MAX_ITEM_TEXT} characters", param=param)
    return value


def item_from_client(raw: Any) -> Item:
    """A `conversation.item.create`'s item → `Item`; `ProtocolError` naming the field otherwise."""
    if not isinstance(raw, dict):
        raise ProtocolError("item must be an object", param="item")
    kind = raw.get("type")
    item_id = raw.get("id") if isinstance(raw.get("id"), str) and 0 < len(raw["id"]) <= 64 else new_id("item")
    if kind == "function_call_output":
        return Item(item_id, kind, call_id=_text(raw.get("call_id"), "item.call_id"), output=_text(raw.get("output"), "item.output"))
    if kind == "function_call":
        return Item(
            item_id, kind, call_id=_text(raw.get("call_id"), "item.call_id"), name=_text(raw.get("name"), "item.name"),
            arguments=_text(raw.get("arguments", ""), "item.arguments"),
        )
    if kind != "message":
        raise ProtocolError("item.type must be message, function_call or function_call_output", param="item.type")
    role = raw.get("role")
    if role not in ("user", "assistant", "system"):
        raise ProtocolError("item.role must be user, assistant or system", param="item.role")
    parts = raw.get("content")
    if not isinstance(parts, list) or not parts or len(parts) > 16:
        raise ProtocolError("item.content must be a list of 1 to 16 parts", param="item.content")
    allowed = _USER_PARTS if role == "user" else _ASSISTANT_PARTS if role == "assistant" else {"input_text"}
    item = Item(item_id, "message", role=role)
    for i, part in enumerate(parts):
        where = f"item.content.{i}"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype not in allowed:
            raise ProtocolError(f"{where}.type must be one of {', '.join(sorted(allowed))} for a {role} message", param=f"{where}.type")
        if ptype == "input_audio":
            try:
                pcm = base64.b64decode(_text(part.get("audio"), f"{where}.audio"), validate=True)
            except ValueError as err:  # binascii.Error, or non-ASCII text
                raise ProtocolError(f"{where}.audio is not valid base64", param=f"{where}.audio") from err
            if len(pcm) % 2 or not pcm:
                raise ProtocolError(f"{where}.audio must be whole 16-bit samples", param=f"{where}.audio")
            item.audio = pcm_to_wav(pcm)
            item.content.append({"type": "input_audio", "transcript": None})
        elif ptype in ("output_audio", "audio"):
            item.content.append({"type": "output_audio", "transcript": _text(part.get("transcript", ""), f"{where}.transcript")})
        else:
            text_type = "input_text" if ptype == "input_text" else "output_text"
            item.content.append({"type": text_type, "text": _text(part.get("text", ""), f"{where}.text")})
    return item


async def chat_messages(items: list[Item], instructions: str, audio_as_text: bool) -> list[dict[str, Any]]:
    """The chat messages of a conversation: the session's instructions first; a user's audio as its
    transcript (`audio_as_text`: the transcript fusion mode, Whisper's text awaited) or as an audio
    part (embed modes); assistant audio as its transcript (what was actually said)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions.strip() else []
    for item in items:
        if item.type == "function_call":
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments or "{}"}}
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            continue
        if item.type == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output or ""})
            continue
        parts: list[dict[str, Any]] = []
        for part in item.content:
            if part["type"] == "input_audio":
                if item.transcript_task is not None and audio_as_text:
                    # shielded: a response cancelled while it waits must not cancel the transcript,
                    # which the next response reads
                    part["transcript"] = await asyncio.shield(item.transcript_task)
                if audio_as_text or item.audio is None:
                    parts.append({"type": "text", "text": part.get("transcript") or ""})
                else:
                    data = base64.b64encode(item.audio).decode("ascii")
                    parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
            else:
                parts.append({"type": "text", "text": part.get("text") or part.get("transcript") or ""})
        if item.role == "user":
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": item.role, "content": "".join(p.get("text", "") for p in parts)})
    return messages
