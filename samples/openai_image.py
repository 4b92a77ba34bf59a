"""An image question with the official `openai` client. Run the service with a vision config
(CLIP weights + a vision projector; see README "Models") — the CPU default has no CLIP weights
and answers this with a 400 that says how to configure them.

    .venv/bin/python samples/openai_image.py [path/to/image.png]
"""

from __future__ import annotations

import base64
import mimetypes
import os
import sys
from pathlib import Path

import openai
from openai import OpenAI

HERE = Path(__file__).resolve().parent
client = OpenAI(base_url=os.environ.get("CHORUS_URL", "http://127.0.0.1:8000") + "/v1", api_key="not-needed-locally")

image_path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "images" / "damaged_parcel.png"
mime = mimetypes.guess_type(image_path.name)[0] or "image/png"
data_url = f"data:{mime};base64," + base64.b64encode(image_path.read_bytes()).decode()

try:
    response = client.chat.completions.create(
        model="chorus",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "The customer sent this photo of their parcel. What do you see?"},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }
        ],
        max_tokens=96,
        temperature=0,
    )
    print(response.choices[0].message.content)
except openai.BadRequestError as err:
    print(f"refused ({err.status_code}): {err.body['message']}")
