"""An image question with the official `openai` client. The default service (`make serve`) reads
images by OCR: the text read from the photo reaches the model as quoted data. Chorus's
`return_media_text` extension also returns what was read (lines, boxes, confidences).

    .venv/bin/python samples/openai_image.py [path/to/image.jpg] ["question"]
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

image_path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "images" / "receipt.jpg"
question = sys.argv[2] if len(sys.argv) > 2 else "What is the TOTAL amount?"
mime = mimetypes.guess_type(image_path.name)[0] or "image/jpeg"
data_url = f"data:{mime};base64," + base64.b64encode(image_path.read_bytes()).decode()

try:
    response = client.chat.completions.create(
        model="chorus",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": question},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }
        ],
        max_tokens=64,
        temperature=0,
        # Chorus extension: return what was read from each media item in `chorus.media`
        extra_body={"chorus": {"return_media_text": True}},
    )
    print("assistant:", response.choices[0].message.content)
    for item in (response.model_extra or {}).get("chorus", {}).get("media", []):
        timing = "from the cache" if item.get("cached") else f"OCR {item.get('ocr_ms')} ms"
        print(f"\nread from {item['kind']} {item['index']} ({item['mode']}, {timing}):")
        for line in item.get("lines", []):
            print(f"  {line['confidence']:.2f}  {line['text']}")
except openai.BadRequestError as err:
    print(f"refused ({err.status_code}): {err.body['message']}")
