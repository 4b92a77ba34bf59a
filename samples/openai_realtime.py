"""A voice turn over the Realtime API with the official `openai` client: the caller's voice note is
sent as 24 kHz PCM, the server's VAD finds the end of the turn, Whisper reads it, and the answer
comes back as text and audio deltas (written to /tmp/chorus-realtime.wav).

    .venv/bin/python samples/openai_realtime.py [path/to/question.wav]
"""

from __future__ import annotations

import base64
import os
import sys
import wave
from pathlib import Path

import numpy as np
import openai
import soundfile as sf
import soxr
from openai import OpenAI

HERE = Path(__file__).resolve().parent
RATE = 24_000  # the Realtime API's audio/pcm: 24 kHz mono 16-bit little-endian

client = OpenAI(
    base_url=os.environ.get("CHORUS_URL", "http://127.0.0.1:8000") + "/v1",
    api_key=os.environ.get("CHORUS_API_KEY", "not-needed-locally"),
)


def pcm24(path: Path) -> bytes:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = soxr.resample(audio.mean(axis=1), rate, RATE)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


clip = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "audio" / "where_is_my_order.wav"
try:
    with client.realtime.connect(model="gpt-realtime") as connection:
        connection.session.update(session={
            "type": "realtime",
            "instructions": "You are a parcel company's phone assistant. Answer in one short sentence.",
            "audio": {"input": {"transcription": {"model": "whisper-1"},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 800}}},
        })
        # the caller speaks, then pauses: the server decides the turn is over
        audio = pcm24(clip) + bytes(RATE * 2)  # + 1 s of silence
        for i in range(0, len(audio), 9600):  # 200 ms per event
            connection.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + 9600]).decode())
        spoken = bytearray()
        for event in connection:
            if event.type == "conversation.item.input_audio_transcription.completed":
                print(f"caller: {event.transcript}")
            elif event.type == "response.output_audio_transcript.delta":
                print(event.delta, end="", flush=True)
            elif event.type == "response.output_audio.delta":
                spoken += base64.b64decode(event.delta)
            elif event.type == "error":
                print(f"\nerror: {event.error.message}")
            elif event.type == "response.done":
                print(f"\n[{event.response.status}]")
                break
    with wave.open("/tmp/chorus-realtime.wav", "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(bytes(spoken))
    print(f"assistant audio: {len(spoken) / (2 * RATE):.1f} s -> /tmp/chorus-realtime.wav")
except (openai.APIConnectionError, OSError):
    sys.exit("Chorus is not running: start it with `make serve` (or set CHORUS_URL).")
