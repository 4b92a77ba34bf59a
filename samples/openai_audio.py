"""Speech in, text out, with the official `openai` client. Run `make serve` first.

    .venv/bin/python samples/openai_audio.py [path/to/audio.wav]
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

from openai import OpenAI

HERE = Path(__file__).resolve().parent
client = OpenAI(base_url=os.environ.get("CHORUS_URL", "http://127.0.0.1:8000") + "/v1", api_key="not-needed-locally")

audio_path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "audio" / "where_is_my_order.wav"
audio_b64 = base64.b64encode(audio_path.read_bytes()).decode()

print("transcript:", client.audio.transcriptions.create(model="whisper-1", file=audio_path.open("rb")).text)

stream = client.chat.completions.create(
    model="chorus",
    messages=[
        {"role": "system", "content": "You are a friendly customer-service assistant. Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "A caller left this voice note:"},
                {"type": "input_audio", "input_audio": {"data": audio_b64, "format": audio_path.suffix.lstrip(".")}},
            ],
        },
    ],
    max_tokens=96,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
    # Chorus extension: how the audio reaches the LLM (embed | transcript | both)
    extra_body={"chorus": {"fusion": "transcript"}},
)
print("assistant: ", end="")
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    elif chunk.usage:
        print(f"\n[usage: {chunk.usage.prompt_tokens} prompt + {chunk.usage.completion_tokens} completion tokens]")
