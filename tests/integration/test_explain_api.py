"""`chorus.explain` on the live app: whole, streamed, on the Responses API, and what it does not do."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from .conftest import AUTH, REPO

CALLER = REPO / "samples" / "audio" / "where_is_my_order.wav"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def _audio_part() -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(CALLER.read_bytes()).decode(), "format": "wav"}}


def _label() -> str:
    image = Image.new("RGB", (640, 220), "white")
    draw, face = ImageDraw.Draw(image), ImageFont.truetype(FONT, 44)
    draw.text((30, 30), "NORTHWIND PARCELS", fill="black", font=face)
    draw.text((30, 120), "ORDER QX4821", fill="black", font=face)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _chat(serve_url: str, content, **extra) -> httpx.Response:
    body = {"model": "chorus", "max_tokens": 16, "temperature": 0, "messages": [
        {"role": "system", "content": "Answer in a few words."}, {"role": "user", "content": content}], **extra}
    return httpx.post(f"{serve_url}/v1/chat/completions", json=body, headers=dict(AUTH), timeout=180)


def _check_contract(explanation: dict, kinds: set[str]) -> None:
    modalities = explanation["modalities"]
    assert set(modalities) == kinds
    assert abs(sum(m["attention_share"] for m in modalities.values()) - 1.0) < 1e-3
    assert all(m["tokens"] > 0 for m in modalities.values())
    assert abs(sum(s["relevance"] for s in explanation["segments"]) - 1.0) < 1e-3
    method = explanation["method"]
    assert method["passes"] == 1 and method["rows"] == 1 + len(kinds) and method["cost_ms"] > 0
    assert explanation["answer"]["tokens"] > 0


def test_an_explained_answer_says_what_it_rested_on(serve_url):
    resp = _chat(serve_url, [{"type": "text", "text": "What does the caller want?"}, _audio_part()], chorus={"explain": True})
    assert resp.status_code == 200, resp.text
    explanation = resp.json()["chorus"]["explanation"]
    _check_contract(explanation, {"instructions", "text", "audio"})
    words = [s for s in explanation["segments"] if s["kind"] == "audio"]
    assert words and all(s["media"] == 0 and s["text"] for s in words)  # transcript mode: by word
    assert any(s["kind"] == "instructions" and s["text"] == "Answer in a few words." for s in explanation["segments"])


def test_no_explanation_unless_asked(serve_url):
    resp = _chat(serve_url, "Hello")
    assert resp.status_code == 200 and "chorus" not in resp.json()


def test_a_streamed_explanation_is_the_last_chunk_before_done(serve_url):
    body = {"model": "chorus", "max_tokens": 8, "temperature": 0, "stream": True, "chorus": {"explain": True},
            "messages": [{"role": "user", "content": "Where is my parcel?"}]}
    with httpx.stream("POST", f"{serve_url}/v1/chat/completions", json=body, headers=dict(AUTH), timeout=180) as resp:
        assert resp.status_code == 200
        data = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    last = json.loads(data[-2])
    assert last["choices"] == [] and "explanation" in last["chorus"]
    _check_contract(last["chorus"]["explanation"], {"text"})
    assert all("explanation" not in json.loads(d).get("chorus", {}) for d in data[:-2])


def test_ocr_lines_come_with_their_boxes(serve_url):
    content = [{"type": "text", "text": "What is the order number?"}, {"type": "image_url", "image_url": {"url": _label()}}]
    resp = _chat(serve_url, content, chorus={"explain": True})
    assert resp.status_code == 200, resp.text
    explanation = resp.json()["chorus"]["explanation"]
    lines = [s for s in explanation["segments"] if s["kind"] == "image"]
    assert [s["text"].replace(" ", "") for s in lines] == ["NORTHWINDPARCELS", "ORDERQX4821"]  # as OCR read them
    for segment in lines:
        x0, y0, x1, y1 = segment["box"]
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 220
    assert lines[0]["box"][1] < lines[1]["box"][1]  # the first line above the second


def test_the_responses_api_keeps_the_explanation_with_the_response(serve_url):
    body = {"model": "chorus", "input": "Where is my parcel?", "max_output_tokens": 8, "temperature": 0,
            "chorus": {"explain": True}}
    resp = httpx.post(f"{serve_url}/v1/responses", json=body, headers=dict(AUTH), timeout=180)
    assert resp.status_code == 200, resp.text
    created = resp.json()
    _check_contract(created["chorus"]["explanation"], {"text"})
    stored = httpx.get(f"{serve_url}/v1/responses/{created['id']}", headers=dict(AUTH), timeout=30).json()
    assert stored["chorus"]["explanation"] == created["chorus"]["explanation"]


def test_explain_must_be_a_boolean(serve_url):
    resp = _chat(serve_url, "Hi", chorus={"explain": "yes please"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"].startswith("chorus.explain")


def _silence_wav() -> str:
    import numpy as np
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, np.zeros(16000, dtype="float32"), 16000, format="WAV")
    return base64.b64encode(out.getvalue()).decode()


# explain beside everything else a request can ask for: each a 200 with a whole explanation, never a 5xx
EXPLAIN_WITH = {
    "one token": {"max_tokens": 1},
    "a json schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}, "required": ["city"]}}}},
    "a required tool call": {"tool_choice": "required", "tools": [{"type": "function", "function": {
        "name": "lookup_order", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]},
    "a choice": {"chorus": {"explain": True, "choice": ["yes", "no"]}},
    "logprobs": {"logprobs": True, "top_logprobs": 2},
    "a silent clip": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What did I say?"},
        {"type": "input_audio", "input_audio": {"data": _silence_wav(), "format": "wav"}}]}]},
    "embedded audio": {"chorus": {"explain": True, "fusion": "embed"}, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What did I say?"}, _audio_part()]}]},
}


@pytest.mark.parametrize("case", list(EXPLAIN_WITH))
def test_explain_beside_other_features(serve_url, case):
    body = {"model": "chorus", "max_tokens": 12, "temperature": 0, "chorus": {"explain": True},
            "messages": [{"role": "user", "content": "Which city is the capital of France?"}], **EXPLAIN_WITH[case]}
    resp = httpx.post(f"{serve_url}/v1/chat/completions", json=body, headers=dict(AUTH), timeout=180)
    assert resp.status_code == 200, resp.text[:500]
    explanation = resp.json()["chorus"]["explanation"]
    assert explanation["answer"]["tokens"] >= 1
    assert abs(sum(m["attention_share"] for m in explanation["modalities"].values()) - 1.0) < 1e-3
    if case == "embedded audio":  # 80 ms bins over the clip's 6.35 s
        bins = [s for s in explanation["segments"] if "start_s" in s]
        assert bins and bins[0]["start_s"] == 0.0 and 6.0 < bins[-1]["end_s"] < 6.6
