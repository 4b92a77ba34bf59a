"""A stored conversation with the official `openai` client: a voice note, then a photo, then a
follow-up that sends only the new words — the service keeps the rest (Responses and Conversations
APIs). Every call is an unchanged `openai` call.

    .venv/bin/python samples/openai_conversation.py
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import openai
from openai import OpenAI

HERE = Path(__file__).resolve().parent
client = OpenAI(
    base_url=os.environ.get("CHORUS_URL", "http://127.0.0.1:8000") + "/v1",
    api_key=os.environ.get("CHORUS_API_KEY", "not-needed-locally"),  # a deployment with auth.api_keys needs one
)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


try:
    conversation = client.conversations.create(metadata={"channel": "phone", "ticket": "T-1042"})
    print(f"conversation {conversation.id}")

    # 1. a voice note (read by Whisper; stored with its transcript)
    voice = client.responses.create(
        model="chorus", conversation=conversation.id, max_output_tokens=48, temperature=0,
        input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Answer this caller briefly:"},
            {"type": "input_audio", "input_audio": {"data": b64(HERE / "audio" / "where_is_my_order.wav"), "format": "wav"}},
        ]}],
    )
    print(f"[voice note] {voice.output_text}")

    # 2. a photo of the receipt, streamed
    print("[photo] ", end="", flush=True)
    with client.responses.create(
        model="chorus", conversation=conversation.id, max_output_tokens=32, temperature=0, stream=True,
        input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What is the TOTAL amount?"},
            {"type": "input_image", "image_url": "data:image/jpeg;base64," + b64(HERE / "images" / "receipt.jpg")},
        ]}],
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                print(event.delta, end="", flush=True)
    print()

    # 3. a follow-up: only the new words travel; the photo is not read again (encoder cache)
    follow_up = client.responses.create(
        model="chorus", conversation=conversation.id, input="Thanks. Can I get a refund for it?",
        max_output_tokens=48, temperature=0,
    )
    print(f"[follow-up] {follow_up.output_text}")

    items = client.conversations.items.list(conversation.id, order="asc")
    print(f"{len(items.data)} items stored: " + ", ".join(f"{i.type}/{getattr(i, 'role', '-')}" for i in items.data))
    print(f"stored response: {client.responses.retrieve(follow_up.id).status}")
except openai.APIConnectionError:
    sys.exit("Chorus is not running: start it with `make serve` (or set CHORUS_URL)")
