"""Speech out and the realtime voice channel against the live app (real Serve, real HTTP and
WebSockets, hibari's voice, Silero VAD, the packaged Whisper and LLM): the official openai client's
`audio.speech` and `realtime.connect` unchanged, spoken chat answers, barge-in, and the socket's
limits."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import soxr
import websockets.sync.client as ws_client

from .conftest import API_KEY, AUTH

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "audio" / "where_is_my_order.wav"


def _words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()


def _pcm24(path: Path = SAMPLE) -> bytes:
    audio, rate = sf.read(path, dtype="float32")
    audio = soxr.resample(audio, rate, 24_000)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def _ws_url(serve_url: str, model: str = "chorus") -> str:
    return serve_url.replace("http://", "ws://") + f"/v1/realtime?model={model}"


# --- /v1/audio/speech --------------------------------------------------------------------------


def test_speech_wav_is_heard_back_word_for_word(client):
    text = "Your refund was sent this morning to the card you paid with."
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="wav").content
    samples, rate = sf.read(io.BytesIO(audio), dtype="float32")
    assert rate == 24_000 and 1.5 < len(samples) / rate < 8
    heard = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", audio, "audio/wav")).text
    assert _words(heard) == _words(text), heard


def test_speech_streams_sentence_by_sentence(client):
    text = "Thanks for calling. Your parcel left the warehouse today. It should arrive on Friday."
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="nova", input=text, response_format="pcm") as response:
        assert response.headers["content-type"].startswith("audio/pcm")
        chunks = [chunk for chunk in response.iter_bytes() if chunk]
    audio = b"".join(chunks)
    assert len(audio) % 2 == 0 and len(audio) / 48_000 > 3  # 24 kHz s16le: seconds = bytes / 48000
    assert len(chunks) >= 3  # a chunk per sentence at least (HTTP may split them further)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac"])
def test_speech_formats_decode(client, fmt):
    audio = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="One moment, please.", response_format=fmt).content
    samples, rate = sf.read(io.BytesIO(audio), dtype="float32")
    assert len(samples) / rate > 0.5


def test_speech_sse_events(serve_url):
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello. Goodbye.", "response_format": "pcm", "stream_format": "sse"}
    with httpx.stream("POST", f"{serve_url}/v1/audio/speech", json=body, headers=AUTH, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2 and sum(len(base64.b64decode(e["audio"])) for e in deltas) > 24_000
    assert events[-1]["usage"]["input_tokens"] == len(body["input"])


@pytest.mark.parametrize(
    ("change", "status", "param", "says"),
    [
        ({"voice": "nobody"}, 400, "voice", "alloy"),
        ({"response_format": "aac"}, 400, "response_format", "mp3, opus, flac, wav, pcm"),
        ({"response_format": "ogg"}, 400, "response_format", None),
        ({"speed": 5}, 400, "speed", None),
        ({"input": "x" * 4097}, 400, "input", None),
        ({"input": "   "}, 400, "input", None),
        ({"model": "tts-9"}, 404, "model", None),
        ({"stream_format": "video"}, 400, "stream_format", None),
    ],
)
def test_speech_refusals(serve_url, change, status, param, says):
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello.", **change}
    response = httpx.post(f"{serve_url}/v1/audio/speech", json=body, headers=AUTH, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    if says:
        assert says in error["message"]


# --- spoken chat answers -----------------------------------------------------------------------


def test_chat_answer_spoken_and_named_in_a_follow_up(client):
    ask = {"role": "user", "content": "Say hello to a customer in one short sentence."}
    first = client.chat.completions.create(
        model="chorus", messages=[ask], modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}, max_completion_tokens=24
    )
    message = first.choices[0].message
    assert message.content is None and message.audio.transcript
    samples, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)), dtype="float32")
    assert rate == 24_000 and len(samples) > 0.3 * rate
    assert message.audio.expires_at > time.time() and message.audio.id.startswith("audio_")
    follow = client.chat.completions.create(
        model="chorus", messages=[ask, {"role": "assistant", "audio": {"id": message.audio.id}}, {"role": "user", "content": "Thanks."}],
        max_completion_tokens=8,
    )
    assert follow.choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chorus", messages=[ask, {"role": "assistant", "audio": {"id": "audio_unknown"}}], max_completion_tokens=4)
    assert err.value.body["param"] == "messages.1.audio.id"


def test_chat_audio_streams_while_the_text_does(client):
    stream = client.chat.completions.create(
        model="chorus", messages=[{"role": "user", "content": "Tell a customer two short facts about parcels."}],
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"}, max_completion_tokens=48, stream=True,
        temperature=0,  # greedy: an answer of several sentences every time (a sampled one was once a single sentence)
    )
    kinds, transcript, audio = [], [], b""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta.model_dump()
        if delta.get("audio", {}) and delta["audio"].get("transcript"):
            kinds.append("text")
            transcript.append(delta["audio"]["transcript"])
        if delta.get("audio", {}) and delta["audio"].get("data"):
            kinds.append("audio")
            audio += base64.b64decode(delta["audio"]["data"])
    assert transcript and audio and len(audio) % 2 == 0
    said = "".join(transcript)
    assert sum(said.count(mark) for mark in ".!?") >= 2, said  # a first sentence to speak while the rest is written
    assert kinds.index("audio") < len(kinds) - 1 - kinds[::-1].index("text")  # audio began before the text ended


def test_chat_audio_refusals(client):
    ask = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chorus", messages=ask, modalities=["text", "audio"])
    assert err.value.body["param"] == "audio"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chorus", messages=ask, modalities=["text", "audio"], audio={"voice": "zz", "format": "wav"})
    assert err.value.body["param"] == "audio.voice"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chorus", messages=ask, modalities=["text", "audio"], audio={"voice": "alloy", "format": "aac"})
    assert err.value.body["param"] == "audio.format"


# --- /v1/realtime --------------------------------------------------------------------------------


def _until(connection, kind: str, timeout_s: float = 90) -> list:
    """Events until one of `kind` (inclusive)."""
    events = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        event = connection.recv()
        events.append(event)
        if event.type == kind:
            return events
    raise AssertionError(f"no {kind} in {timeout_s} s: {[e.type for e in events]}")


def test_realtime_push_to_talk_with_the_openai_client(serve_url):
    client = openai.OpenAI(base_url=f"{serve_url}/v1", api_key=API_KEY, max_retries=0)
    with client.realtime.connect(model="gpt-realtime") as connection:
        created = connection.recv()
        assert created.type == "session.created"
        connection.session.update(session={"type": "realtime", "instructions": "You are a parcel company's assistant. Answer briefly.",
                                           "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}}})
        assert _until(connection, "session.updated")[-1].session.audio.input.turn_detection is None
        pcm = _pcm24()
        for i in range(0, len(pcm), 9600):
            connection.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 9600]).decode())
        connection.input_audio_buffer.commit()
        connection.response.create()
        events = _until(connection, "response.done")
    types = [e.type for e in events]
    transcribed = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    assert transcribed and "order" in _words(transcribed[0].transcript)
    assert "response.output_audio.delta" in types and "response.output_audio_transcript.delta" in types
    done = events[-1].response
    assert done.status in ("completed", "incomplete") and done.output[0].content[0].transcript


def test_realtime_server_vad_turn_and_barge_in(serve_url):
    with ws_client.connect(_ws_url(serve_url), additional_headers=AUTH, max_size=2**24) as ws:
        recv = lambda: json.loads(ws.recv(timeout=90))  # noqa: E731
        assert recv()["type"] == "session.created"
        # the sample's two sentences have a 0.7 s pause between them: one turn needs a longer silence
        vad = {"type": "server_vad", "silence_duration_ms": 1000}
        ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": vad}}}}))
        assert recv()["type"] == "session.updated"
        silence = b"\0" * 48_000
        speech = _pcm24()
        # silence, the caller's question, silence: Silero finds the turn and a response starts
        for piece in (silence, speech, silence + silence):
            for i in range(0, len(piece), 9600):
                ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(piece[i : i + 9600]).decode()}))
        seen = []
        while True:
            event = recv()
            seen.append(event)
            if event["type"] == "response.output_audio.delta":
                break
        types = [e["type"] for e in seen]
        assert types.count("input_audio_buffer.speech_started") == 1, types  # one turn
        assert types.index("input_audio_buffer.speech_started") < types.index("input_audio_buffer.speech_stopped") < types.index("input_audio_buffer.committed")
        # the caller speaks again while the answer plays: the response is cancelled
        for i in range(0, len(speech), 9600):
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(speech[i : i + 9600]).decode()}))
        after = []
        while True:
            event = recv()
            after.append(event)
            if event["type"] == "response.done":
                break
        kinds = [e["type"] for e in after]
        barge = kinds.index("input_audio_buffer.speech_started")
        cancelled = after[-1]["response"]
        if cancelled["status"] == "cancelled":  # the answer was still playing when the caller spoke
            assert cancelled["status_details"]["reason"] == "turn_detected"
            assert "response.output_audio.delta" not in kinds[barge:]
        else:  # a very short answer can finish first; then the turn must not have cut it
            assert cancelled["status"] in ("completed", "incomplete")


def test_realtime_refuses_bad_events_and_keeps_going(serve_url):
    with ws_client.connect(_ws_url(serve_url), additional_headers=AUTH) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        for raw in ("not json", json.dumps({"type": "session.nope"}), json.dumps({"type": "input_audio_buffer.append", "audio": "AQID"}),
                    json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}),
                    json.dumps({"type": "response.cancel"})):
            ws.send(raw)
            event = json.loads(ws.recv(timeout=30))
            assert event["type"] == "error", event
        ws.send(json.dumps({"type": "session.update", "session": {"instructions": "hi"}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"


def test_realtime_handshake_refusals(serve_url):
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:  # no key: refused before the socket opens (HTTP 403)
        with ws_client.connect(_ws_url(serve_url)) as ws:
            ws.recv(timeout=10)
    assert refused.value.response.status_code == 403
    with ws_client.connect(_ws_url(serve_url), subprotocols=[f"openai-insecure-api-key.{API_KEY}", "realtime"]) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"  # the browser's way to send a key
    with pytest.raises(InvalidStatus) as refused:
        with ws_client.connect(_ws_url(serve_url, model="gpt-9"), additional_headers=AUTH) as ws:
            ws.recv(timeout=10)
    assert refused.value.response.status_code == 403


def test_realtime_oversized_event_closes_with_1009(serve_url):
    with ws_client.connect(_ws_url(serve_url), additional_headers=AUTH, max_size=2**24) as ws:
        ws.recv(timeout=30)
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (17 * 2**20)}))
        with pytest.raises(websockets_closed()) as err:
            while True:
                ws.recv(timeout=30)
        assert err.value.rcvd is not None and err.value.rcvd.code == 1009


def websockets_closed():
    from websockets.exceptions import ConnectionClosed

    return ConnectionClosed


def test_fifty_sockets_at_once_and_freed_on_close(serve_url):
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with ws_client.connect(_ws_url(serve_url), additional_headers=AUTH, open_timeout=60) as ws:
                assert json.loads(ws.recv(timeout=60))["type"] == "session.created"
                ws.send(json.dumps({"type": "session.update", "session": {"instructions": "x"}}))
                assert json.loads(ws.recv(timeout=60))["type"] == "session.updated"
                barrier.wait(timeout=120)
        except BaseException as err:  # noqa: BLE001 — reported below
            errors.append(err)

    barrier = threading.Barrier(50)
    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert errors == []
    deadline = time.monotonic() + 1.0 + 2.0  # freed within 1 s of closing (+ the health call's own time)
    while time.monotonic() < deadline:
        if httpx.get(f"{serve_url}/health", timeout=10).json()["ingress"]["realtime_sessions"] == 0:
            break
    assert httpx.get(f"{serve_url}/health", timeout=10).json()["ingress"]["realtime_sessions"] == 0


def _run_sample(name: str, serve_url: str) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "CHORUS_URL": serve_url, "CHORUS_API_KEY": API_KEY}
    run = subprocess.run([sys.executable, str(REPO / "samples" / name)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_the_speech_sample_runs_unchanged(serve_url):
    out = _run_sample("openai_speech.py", serve_url)
    # the answer is printed with repr(): quoted with ' or, when it holds an apostrophe, with "
    assert "-> /tmp/chorus-greeting.wav" in out and "first audio after" in out and ("answer: '" in out or 'answer: "' in out)
    samples, rate = sf.read("/tmp/chorus-update.wav", dtype="float32")
    assert rate == 24_000 and len(samples) / rate > 3  # three sentences, streamed into one playable WAV


def test_the_realtime_sample_runs_unchanged(serve_url):
    out = _run_sample("openai_realtime.py", serve_url)
    caller = next(line for line in out.splitlines() if line.startswith("caller: "))
    assert "order" in _words(caller)
    assert "[completed]" in out or "[incomplete]" in out
    assert "assistant audio: " in out and not out.split("assistant audio: ")[1].startswith("0.0 s")
