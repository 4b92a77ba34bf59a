"""Speech out with the official `openai` client: a whole WAV, then a reply streamed sentence by
sentence into a file as it is spoken, then a spoken chat answer. Every call is an unchanged
`openai` call.

    .venv/bin/python samples/openai_speech.py      # writes /tmp/chorus-*.wav
"""

from __future__ import annotations

import base64
import os
import sys
import time

import openai
from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("CHORUS_URL", "http://127.0.0.1:8000") + "/v1",
    api_key=os.environ.get("CHORUS_API_KEY", "not-needed-locally"),  # a deployment with auth.api_keys needs one
)

try:
    # 1. one file: the words of a reply in OpenAI's voice "alloy" (hibari's neural voice here)
    speech = client.audio.speech.create(
        model="tts-1", voice="alloy", response_format="wav", input="Thanks for calling Northwind. How can I help you today?"
    )
    speech.write_to_file("/tmp/chorus-greeting.wav")
    print(f"greeting: {len(speech.content)} bytes -> /tmp/chorus-greeting.wav")

    # 2. streamed: the first sentence's audio arrives while the rest is still being spoken
    started = time.perf_counter()
    text = "Your parcel left our warehouse this morning. It should arrive on Friday. Is there anything else?"
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text, response_format="wav") as response:
        with open("/tmp/chorus-update.wav", "wb") as out:
            for i, chunk in enumerate(response.iter_bytes()):
                if i == 0:
                    print(f"first audio after {1000 * (time.perf_counter() - started):.0f} ms")
                out.write(chunk)
    print(f"update: done after {1000 * (time.perf_counter() - started):.0f} ms -> /tmp/chorus-update.wav")

    # 3. a chat answer, spoken: message.audio holds the WAV and its transcript
    answer = client.chat.completions.create(
        model="chorus", modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}, max_completion_tokens=40,
        messages=[{"role": "user", "content": "Greet a caller who asks where their parcel is, in one sentence."}],
    )
    audio = answer.choices[0].message.audio
    with open("/tmp/chorus-answer.wav", "wb") as out:
        out.write(base64.b64decode(audio.data))
    print(f"answer: {audio.transcript!r} -> /tmp/chorus-answer.wav")
except openai.APIConnectionError:
    sys.exit("Chorus is not running: start it with `make serve` (or set CHORUS_URL).")
except openai.APIStatusError as err:
    sys.exit(f"Chorus refused the request ({err.status_code}): {err.message}")
