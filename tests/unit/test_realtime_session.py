"""The realtime session (serve/services/realtime.py) over the real chat and speech services, with a
scripted decoder, a fake Speech handle and a loudness VAD: event order, push-to-talk and server VAD
turns, barge-in, and an error event (never a dead session) for every bad client event."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from typing import Any

import pytest

from serve.config import ChorusConfig
from serve.services.chat import ChatService
from serve.services.realtime import RealtimeSession
from serve.services.realtime_outbox import Outbox
from serve.services.speech import SpeechService
from tests.helpers.scripted import ScriptedDecoder
from tests.helpers.voice import FakeSpeechHandle, LoudnessVad, pcm


def sync(test):
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


ANSWER = ["Your order ", "ships today. ", "It arrives ", "on Monday."]


class Harness:
    def __init__(self, script: list[Any] | None = None, *, gate: asyncio.Event | None = None, max_bytes: int = 2**24, **config: Any) -> None:
        self.config = ChorusConfig.model_validate(config)
        self.decoder = ScriptedDecoder(script or list(ANSWER))
        self.speech_handle = FakeSpeechHandle(gate)
        self.outbox = Outbox(max_bytes)
        self.transcribed: list[bytes] = []
        self.transcribed_at: list[int] = []  # how many events were out when each transcription started
        self.session = RealtimeSession(
            config=self.config, model="chorus", outbox=self.outbox, chat=ChatService(self.config, {}, self.decoder),
            speech=SpeechService(self.config, self.speech_handle), transcribe=self._transcribe,
            vad_factory=lambda detection: LoudnessVad(detection.silence_duration_ms),
        )
        self.session.created()

    async def _transcribe(self, wav: bytes) -> str:
        self.transcribed.append(wav)
        self.transcribed_at.append(len(self.outbox._events))
        return "where is my order"

    async def send(self, **event: Any) -> None:
        await self.session.handle(json.dumps(event))

    async def append(self, audio: bytes, chunk_ms: int = 100) -> None:
        step = 48 * chunk_ms
        for i in range(0, len(audio), step):
            await self.send(type="input_audio_buffer.append", audio=base64.b64encode(audio[i : i + step]).decode())

    async def settle(self) -> None:
        for _ in range(3):
            if self.session.task is not None:
                await asyncio.wait({self.session.task}, timeout=5)
            await asyncio.sleep(0)

    def events(self) -> list[dict[str, Any]]:
        return [event for event, _text in self.outbox._events]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events()]

    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events() if e["type"] == "error"]


PUSH_TO_TALK = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}


def test_session_created_reports_the_ga_session() -> None:
    h = Harness()
    created = h.events()[0]
    assert created["type"] == "session.created" and created["event_id"].startswith("event_")
    session = created["session"]
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["output"]["voice"] == "alloy"


@sync
async def test_session_update_applies_ga_and_beta_names() -> None:
    h = Harness()
    await h.send(type="session.update", session={"instructions": "Be brief.", "audio": {"output": {"voice": "echo"}}})
    await h.send(type="session.update", session={"modalities": ["text"], "input_audio_format": "pcm16", "turn_detection": None})
    updates = [e["session"] for e in h.events() if e["type"] == "session.updated"]
    assert updates[0]["instructions"] == "Be brief." and updates[0]["audio"]["output"]["voice"] == "echo"
    assert updates[1]["output_modalities"] == ["text"] and updates[1]["audio"]["input"]["turn_detection"] is None
    assert updates[1]["instructions"] == "Be brief."  # fields left out keep their value
    assert h.errors() == []


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        ({"type": "session.update", "session": {"audio": {"output": {"voice": "nobody"}}}}, "invalid_value", "session.audio.output.voice"),
        ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}, "unsupported_format", "session.audio.input.format"),
        ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}, "unsupported_format", "session.audio.input.format"),
        ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}}, "invalid_value", "session.audio.input.turn_detection"),
        ({"type": "session.update", "session": {"temperature": 9}}, "invalid_value", "session.temperature"),
        ({"type": "session.update", "session": "loud"}, "invalid_value", "session"),
        ({"type": "session.explode"}, "unknown_event", "type"),
        ({"no": "type"}, "unknown_event", "type"),
        ({"type": "input_audio_buffer.append", "audio": "%%%"}, "invalid_value", "audio"),
        ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\1\2\3").decode()}, "invalid_value", "audio"),
        ({"type": "input_audio_buffer.append", "audio": 42}, "invalid_value", "audio"),
        ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", None),
        ({"type": "response.cancel"}, "response_cancel_not_active", None),
        ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_image"}]}}, "invalid_value", "item.content.0.type"),
        ({"type": "conversation.item.create", "item": {"type": "message", "role": "robot", "content": []}}, "invalid_value", "item.role"),
        ({"type": "conversation.item.create", "previous_item_id": "item_nope", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}, "invalid_value", "previous_item_id"),
        ({"type": "conversation.item.delete", "item_id": "item_nope"}, "invalid_value", "item_id"),
        ({"type": "response.create", "response": "now"}, "invalid_value", "response"),
        # found by the fuzzing: each once closed the socket (1011) or failed the next response
        ({"type": "input_audio_buffer.append", "audio": "é"}, "invalid_value", "audio"),
        ({"type": "session.update", "session": {"input_audio_format": ["pcm16"]}}, "invalid_value", "session.input_audio_format"),
        ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a\ud800b"}]}}, "invalid_unicode", "item.content.0.text"),
        ({"type": "session.update", "session": {"max_output_tokens": 0}}, "invalid_value", "session.max_output_tokens"),
        ({"type": "session.update", "session": {"max_output_tokens": 10**30}}, "invalid_value", "session.max_output_tokens"),
        ({"type": "session.update", "session": {"turn_detecton": None}}, "unknown_parameter", "session.turn_detecton"),
        ({"type": "session.update", "session": {"audio": {"output": {"voise": "alloy"}}}}, "unknown_parameter", "session.audio.output.voise"),
        ({"type": "response.create", "response": {"max_output_tokens": -1}}, "invalid_value", "response.max_output_tokens"),
    ],
)
@sync
async def test_a_bad_event_gets_an_error_event_and_the_session_goes_on(event: dict, code: str, param: str | None) -> None:
    h = Harness()
    await h.send(event_id="evt_client_1", **event)
    errors = h.errors()
    assert len(errors) == 1, h.types()
    assert errors[0]["code"] == code and errors[0]["param"] == param
    if "type" in event:
        assert errors[0]["event_id"] == "evt_client_1"
    await h.send(type="session.update", session={"instructions": "still here"})  # the session lives on
    assert h.types()[-1] == "session.updated"


@sync
async def test_malformed_json_is_an_error_event() -> None:
    h = Harness()
    for raw in ("{not json", "[1, 2]", b"\xff\xfe", "[" * 100_000):
        await h.session.handle(raw)
    assert [e["code"] for e in h.errors()] == ["invalid_json", "invalid_event", "invalid_json", "invalid_json"]


@sync
async def test_a_full_buffer_refuses_more_audio() -> None:
    h = Harness(realtime={"max_buffer_s": 0.5})
    await h.send(**PUSH_TO_TALK)
    await h.append(pcm(0.4))
    await h.append(pcm(0.2))
    assert [e["code"] for e in h.errors()] == ["input_audio_buffer_full"]
    assert len(h.session.buffer) == 48 * 500  # full at 0.5 s: the refused append added nothing


@sync
async def test_push_to_talk_turn_streams_text_and_audio_in_openai_order() -> None:
    h = Harness()
    await h.send(**PUSH_TO_TALK)
    await h.append(pcm(1.0, loud=True))
    await h.send(type="input_audio_buffer.commit")
    await h.send(type="response.create")
    await h.settle()
    types = h.types()
    assert types.index("input_audio_buffer.committed") < types.index("response.created")
    order = ["response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
             "response.output_audio_transcript.delta", "response.output_audio.delta", "response.output_audio.done",
             "response.output_audio_transcript.done", "response.content_part.done", "response.output_item.done", "response.done"]
    positions = [types.index(t, types.index("response.created")) for t in order]
    assert positions == sorted(positions), types
    done = h.events()[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "".join(ANSWER)}]
    assert done["usage"]["output_tokens"] == len(ANSWER)
    # spoken a sentence at a time, in order, while the text streamed
    assert [s[0] for s in h.speech_handle.sentences] == ["Your order ships today.", "It arrives on Monday."]
    audio = b"".join(base64.b64decode(e["delta"]) for e in h.events() if e["type"] == "response.output_audio.delta")
    assert len(audio) == 48 * (len("Your order ships today.") + len("It arrives on Monday."))
    # the turn reached the decoder as Whisper's transcript (the transcript fusion mode)
    assert len(h.transcribed) == 1 and h.transcribed[0][:4] == b"RIFF"
    user = h.decoder.requests[0].messages[-1]
    assert "where is my order" in str(user)


@sync
async def test_server_vad_detects_the_turn_and_answers_it() -> None:
    h = Harness(speech={"vad": {"silence_duration_ms": 300}})
    await h.send(type="session.update", session={"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    await h.append(pcm(0.5) + pcm(1.0, loud=True) + pcm(0.6))
    await h.settle()
    events = h.events()
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert started["audio_start_ms"] == 500 - 300  # the speech's start less the prefix padding
    assert abs(stopped["audio_end_ms"] - 1500) <= 20
    assert started["item_id"] == stopped["item_id"]
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    assert committed["item_id"] == started["item_id"]
    transcribed = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert transcribed["transcript"] == "where is my order" and transcribed["item_id"] == committed["item_id"]
    assert events[-1]["type"] == "response.done" and events[-1]["response"]["status"] == "completed"
    # the committed audio is the speech plus the padding: ~1.3 s of 24 kHz 16-bit (+ the WAV header)
    assert abs(len(h.transcribed[0]) - 44 - 48 * 1300) <= 48 * 20


@sync
async def test_barge_in_cancels_the_response_and_keeps_what_was_said() -> None:
    gate = asyncio.Event()  # the second sentence's audio waits here: the caller interrupts first
    h = Harness(gate=gate, speech={"vad": {"silence_duration_ms": 300}})
    await h.send(**PUSH_TO_TALK)
    await h.send(type="session.update", session={"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300, "create_response": False}}}})
    await h.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Where is my order?"}]})
    await h.send(type="response.create")
    for _ in range(200):
        await asyncio.sleep(0.01)
        if len(h.speech_handle.sentences) == 2:
            break
    assert len(h.speech_handle.sentences) == 2  # the first sentence is out, the second being spoken
    await h.append(pcm(0.3, loud=True))  # the caller speaks
    await h.settle()
    types = h.types()
    barge = types.index("input_audio_buffer.speech_started")
    assert "response.output_audio.delta" not in types[barge:]  # no audio after the interruption
    done = h.events()[types.index("response.done")]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "Your order ships today."}]
    assert h.speech_handle.streams[1].cancelled  # the speech synthesis stopped
    assert h.session.items[-1].content[0]["transcript"] == "Your order ships today."  # what the caller heard
    gate.set()


@sync
async def test_response_cancel_stops_the_decoder() -> None:
    hold = asyncio.Event()
    h = Harness(["Hello", hold, " there."])
    await h.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
    await h.send(type="response.create")
    for _ in range(100):
        await asyncio.sleep(0.01)
        if "response.output_audio_transcript.delta" in h.types():
            break
    await h.send(type="response.create")  # one at a time
    await h.send(type="response.cancel")
    await h.settle()
    assert [e["code"] for e in h.errors()] == ["conversation_already_has_active_response"]
    done = h.events()[-1]
    assert done["type"] == "response.done" and done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"


@sync
async def test_text_only_session_streams_text_deltas() -> None:
    h = Harness()
    await h.send(type="session.update", session={"output_modalities": ["text"], "instructions": "You are Northwind's assistant."})
    await h.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
    await h.send(type="response.create")
    await h.settle()
    types = h.types()
    assert "response.output_audio.delta" not in types and h.speech_handle.sentences == []
    deltas = [e["delta"] for e in h.events() if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "".join(ANSWER)
    assert h.events()[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": "".join(ANSWER)}]
    messages = h.decoder.requests[0].messages
    assert messages[0].role == "system" and "Northwind" in str(messages[0])


@sync
async def test_items_create_insert_and_delete() -> None:
    h = Harness()
    text = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]}
    await h.send(type="conversation.item.create", item={**text, "id": "item_a"})
    await h.send(type="conversation.item.create", item={**text, "id": "item_b"})
    await h.send(type="conversation.item.create", previous_item_id="root", item={**text, "id": "item_0"})
    await h.send(type="conversation.item.create", previous_item_id="item_a", item={**text, "id": "item_a2"})
    assert [i.id for i in h.session.items] == ["item_0", "item_a", "item_a2", "item_b"]
    await h.send(type="conversation.item.delete", item_id="item_a2")
    assert [i.id for i in h.session.items] == ["item_0", "item_a", "item_b"]
    assert h.types().count("conversation.item.added") == 4 and "conversation.item.deleted" in h.types()
    await h.send(type="conversation.item.create", item={**text, "id": "item_a"})
    assert h.errors()[-1]["param"] == "item.id"


@sync
async def test_a_speaker_who_never_pauses_has_the_turn_cut() -> None:
    h = Harness(realtime={"max_turn_s": 1.0})
    await h.send(type="session.update", session={"audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}}})
    await h.append(pcm(2.5, loud=True))
    types = h.types()
    assert types.count("input_audio_buffer.committed") >= 2  # cut at 1 s, listening goes on
    assert len(h.session.buffer) <= 48 * 1600


def test_outbox_overflow_and_purge() -> None:
    box = Outbox(max_bytes=2000)
    box.put({"type": "response.output_audio.delta", "response_id": "r1", "delta": "x" * 500})
    box.put({"type": "response.output_audio.delta", "response_id": "r2", "delta": "x" * 500})
    assert not box.overflowed
    assert box.purge_audio("r1") == 1
    box.put({"type": "response.output_audio.delta", "response_id": "r1", "delta": "x" * 3000})
    assert box.overflowed and box.overflow.is_set()


@sync
async def test_a_response_cancelled_while_whisper_reads_leaves_the_transcript_for_the_next() -> None:
    """Barge-in during the transcript wait: the next response still gets the first turn's words."""
    h = Harness()
    release = asyncio.Event()

    async def slow_transcribe(wav: bytes) -> str:
        await release.wait()
        return "where is my order"

    h.session.transcribe = slow_transcribe
    await h.send(**PUSH_TO_TALK)
    await h.append(pcm(0.5, loud=True))
    await h.send(type="input_audio_buffer.commit")
    await h.send(type="response.create")
    await asyncio.sleep(0.05)  # the response waits for Whisper
    await h.send(type="response.cancel")
    await h.send(type="response.create")
    release.set()
    await h.settle()
    statuses = [e["response"]["status"] for e in h.events() if e["type"] == "response.done"]
    assert statuses == ["cancelled", "completed"]
    assert "where is my order" in str(h.decoder.requests[-1].messages)


@sync
async def test_function_tools_over_realtime() -> None:
    """A session's tools reach the decoder; a call comes back as a function_call item with its
    arguments streamed, and its output, added as an item, is in the next response's context."""
    from modalities.llm.tools import render_call

    call = render_call("track_parcel", '{"order_id": "AB123"}')
    h = Harness([call[: len(call) // 2], call[len(call) // 2 :]])
    tool = {"type": "function", "name": "track_parcel", "description": "Where a parcel is", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}
    await h.send(type="session.update", session={"tools": [tool], "tool_choice": "auto", "output_modalities": ["text"]})
    await h.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Where is AB123?"}]})
    await h.send(type="response.create")
    await h.settle()
    done = h.events()[-1]["response"]
    assert done["status"] == "completed", h.types()
    call_item = next(item for item in done["output"] if item["type"] == "function_call")
    assert call_item["name"] == "track_parcel" and '"AB123"' in call_item["arguments"]
    streamed = "".join(e["delta"] for e in h.events() if e["type"] == "response.function_call_arguments.delta")
    assert streamed == call_item["arguments"]
    assert h.decoder.requests[0].params.constraint is not None  # the grammar keeps the call valid
    await h.send(type="conversation.item.create", item={"type": "function_call_output", "call_id": call_item["call_id"], "output": '{"status": "in transit"}'})
    await h.send(type="response.create")
    await h.settle()
    assert "in transit" in str(h.decoder.requests[-1].messages)


@sync
async def test_whisper_starts_on_the_pause_that_ends_the_turn() -> None:
    """A pause of SPECULATE_AFTER_MS starts the transcript; when the pause ends the turn, that
    transcript is the turn's (Whisper is not asked twice), started before speech_stopped."""
    h = Harness(speech={"vad": {"silence_duration_ms": 500}})
    await h.send(type="session.update", session={"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    await h.append(pcm(0.3) + pcm(1.0, loud=True) + pcm(0.8), chunk_ms=20)
    await h.settle()
    types = h.types()
    assert len(h.transcribed) == 1
    assert h.transcribed_at[0] <= types.index("input_audio_buffer.speech_stopped")
    assert next(e for e in h.events() if e["type"] == "conversation.item.input_audio_transcription.completed")["transcript"] == "where is my order"


@sync
async def test_a_pause_that_does_not_end_the_turn_drops_its_guess() -> None:
    h = Harness(speech={"vad": {"silence_duration_ms": 500}})
    await h.append(pcm(0.3) + pcm(0.6, loud=True) + pcm(0.3) + pcm(0.6, loud=True) + pcm(0.8), chunk_ms=20)
    await h.settle()
    assert h.types().count("input_audio_buffer.committed") == 1  # one turn
    assert len(h.transcribed) == 2  # the dropped guess, then the turn
    committed = next(i for i in h.session.items if i.role == "user")
    assert committed.audio == h.transcribed[1]


@sync
async def test_embed_modes_send_the_turns_audio_itself() -> None:
    """With fusion.audio_mode embed the LLM hears the audio (an input_audio part), not Whisper's text;
    assistant audio is always its transcript (what was said)."""
    from serve.services.realtime_items import Item, chat_messages, pcm_to_wav

    wav = pcm_to_wav(pcm(0.2, loud=True))
    user = Item("item_u", "message", role="user", content=[{"type": "input_audio", "transcript": None}], audio=wav)
    said = Item("item_a", "message", role="assistant", content=[{"type": "output_audio", "transcript": "It ships today."}])
    embed = await chat_messages([user, said], "Be brief.", audio_as_text=False)
    assert embed[0] == {"role": "system", "content": "Be brief."}
    part = embed[1]["content"][0]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    assert base64.b64decode(part["input_audio"]["data"]) == wav
    assert embed[2] == {"role": "assistant", "content": "It ships today."}
    user.transcript_task = asyncio.ensure_future(asyncio.sleep(0, result="where is my order"))
    text = await chat_messages([user], "", audio_as_text=True)
    assert text == [{"role": "user", "content": [{"type": "text", "text": "where is my order"}]}]
