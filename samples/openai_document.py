"""A PDF question with the official `openai` client: the document goes as a `file` part (a base64
data URL), as OpenAI's API takes it. The service reads its text layer (scanned pages by OCR).

    .venv/bin/python samples/openai_document.py [path/to/document.pdf] ["question"]
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import openai
from openai import OpenAI

HERE = Path(__file__).resolve().parent
client = OpenAI(base_url=os.environ.get("CHORUS_URL", "http://127.0.0.1:8000") + "/v1", api_key="not-needed-locally")

pdf_path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "documents" / "invoice.pdf"
question = sys.argv[2] if len(sys.argv) > 2 else "What is the total amount due on this invoice?"
file_data = "data:application/pdf;base64," + base64.b64encode(pdf_path.read_bytes()).decode()

try:
    response = client.chat.completions.create(
        model="chorus",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": question},
                    {"type": "file", "file": {"filename": pdf_path.name, "file_data": file_data}},
                ],
            }
        ],
        max_tokens=64,
        temperature=0,
        # Chorus extension: return what was read from the document (its pages) in `chorus.media`
        extra_body={"chorus": {"return_media_text": True}},
    )
    print("assistant:", response.choices[0].message.content)
    for item in (response.model_extra or {}).get("chorus", {}).get("media", []):
        pages = ", ".join(f"{page['number']}: {page['source']}" for page in item.get("pages", []))
        print(f"\nread {item.get('page_count')} page(s) in {item.get('read_ms')} ms (page: source — {pages})")
except openai.BadRequestError as err:
    print(f"refused ({err.status_code}): {err.body['message']}")
