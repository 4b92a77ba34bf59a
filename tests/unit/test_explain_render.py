"""`chorus explain`: the picture of a response's explanation (serve/cli/explain_render.py) encodes the
relevance it was given, and the command draws a saved response, sends `chorus.explain`, and reports an API
error in one line with exit status 1. Synthetic requests and responses; no Ray, no models."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image

from serve.cli import explain, main
from serve.cli.explain_draw import font, layout_runs, normalise, relevance_color, waveform_columns
from serve.cli.explain_render import ExplanationMissing, layout, media_parts, render

RATE = 16_000
BIN_S = 0.08
HOT_BIN, COLD_BIN = 5, 9  # the audio bins with the most and with no relevance
HOT_BOX, COLD_BOX = [10, 10, 90, 40], [110, 60, 190, 90]  # image boxes (original pixels): high and low relevance
SYSTEM = "You are a terse assistant. Answer briefly."
QUESTION = "Where is my order? It was due Monday."


def _wav_b64() -> str:
    t = np.arange(RATE) / RATE
    samples = (0.5 * np.sin(2 * np.pi * 220 * t) * np.linspace(0.1, 1.0, RATE)).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, samples, RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (200, 100), (128, 128, 128)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def request_body() -> dict:
    audio = {"type": "input_audio", "input_audio": {"data": _wav_b64(), "format": "wav"}}
    return {
        "model": "chorus",
        "max_tokens": 32,
        "chorus": {"fusion": "both"},
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [
                {"type": "text", "text": QUESTION},
                audio,                                                                       # media 0: embed mode
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_png_b64()}"}},  # media 1
            ]},
            {"role": "user", "content": [{"type": "text", "text": "And this one?"}, audio]},  # media 2: transcript
        ],
    }


@pytest.fixture(scope="module")
def response_body() -> dict:
    bins = [
        {"kind": "audio", "media": 0, "start_s": round(i * BIN_S, 2), "end_s": round((i + 1) * BIN_S, 2),
         "relevance": 0.2 if i == HOT_BIN else 0.0 if i == COLD_BIN else 0.01}
        for i in range(12)
    ]
    words = [{"kind": "audio", "media": 2, "text": w, "relevance": r}
             for w, r in (("where", 0.01), ("is", 0.0), ("my", 0.002), ("backpack", 0.08))]
    boxes = [
        {"kind": "image", "media": 1, "box": HOT_BOX, "text": "TOTAL $23.85", "relevance": 0.15},
        {"kind": "image", "media": 1, "box": COLD_BOX, "text": "Thank you", "relevance": 0.005},
        {"kind": "image", "media": 1, "text": "a line without a box", "relevance": 0.001},
    ]
    spans = [
        {"kind": "instructions", "message": 0, "span": [0, 26], "text": "You are a terse assistant.", "relevance": 0.02},
        {"kind": "instructions", "message": 0, "span": [27, 42], "text": "Answer briefly.", "relevance": 0.01},
        {"kind": "text", "message": 1, "span": [0, 18], "text": "Where is my order?", "relevance": 0.1},
        {"kind": "text", "message": 1, "span": [19, 37], "text": "It was due Monday.", "relevance": 0.03},
    ]
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "chorus",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Your order ships Monday; the total is $23.85."}}],
        "chorus": {"explanation": {
            "modalities": {
                "text": {"attention_share": 0.41, "ablation_delta_logprob": -3.2, "tokens": 18},
                "audio": {"attention_share": 0.37, "ablation_delta_logprob": -12.5, "tokens": 22},
                "image": {"attention_share": 0.12, "ablation_delta_logprob": -0.4, "tokens": 60},
                "instructions": {"attention_share": 0.10, "ablation_delta_logprob": -0.1, "tokens": 12},
            },
            "segments": bins + words + boxes + spans,
            "answer": {"tokens": 9, "logprob": -4.1},
            "method": {"attention": "last-layers mean", "ablation": "drop modality", "segments": "80 ms bins",
                       "layers": 30, "heads": 9, "passes": 3, "rows": 4, "cost_ms": 85.2, "model": "chorus"},
        }},
    }


def _mean_color(image: Image.Image, box) -> np.ndarray:
    x0, y0, x1, y1 = (round(v) for v in box)
    return np.asarray(image.crop((x0, y0, x1, y1)), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_media_are_numbered_in_request_order(request_body):
    assert [p["type"] for p in media_parts(request_body)] == ["input_audio", "image_url", "input_audio"]


def test_render_returns_a_plausible_picture(request_body, response_body):
    image = render(request_body, response_body)
    assert image.mode == "RGB"
    assert 600 <= image.width <= 1400 and 900 <= image.height <= 4000
    regions = layout(request_body, response_body).regions
    for name in ("audio:0:wave", "audio:0:strip", "image:1", "audio:2:wave", "message:0", "message:1",
                 "modality:audio", "footer"):
        assert name in regions, name
    x0, _, x1, _ = regions["image:1"]
    assert x1 - x0 == 480  # scaled to fit ~480 px wide


def test_waveform_is_drawn(request_body, response_body):
    rendered = layout(request_body, response_body)
    wave = np.asarray(rendered.image.crop(rendered.regions["audio:0:wave"]), dtype=np.int64)
    inked = (wave.sum(axis=2) < 600).mean(axis=0)  # per column: how much of it is not (near) white
    assert inked[-60:].mean() > inked[10:70].mean() > 0  # the tone's envelope rises over the clip


def test_relevance_strip_encodes_relevance(request_body, response_body):
    rendered = layout(request_body, response_body)
    x0, y0, x1, y1 = rendered.regions["audio:0:strip"]
    per_s = (x1 - x0) / 1.0  # the clip is 1 s long

    def under_bin(i: int) -> np.ndarray:
        return _mean_color(rendered.image, (x0 + (i + 0.3) * BIN_S * per_s, y0 + 4, x0 + (i + 0.7) * BIN_S * per_s, y1 - 4))

    hot, cold, mild = under_bin(HOT_BIN), under_bin(COLD_BIN), under_bin(0)
    assert np.abs(hot - cold).sum() > 200
    np.testing.assert_allclose(hot, relevance_color(1.0), atol=2)
    np.testing.assert_allclose(cold, relevance_color(0.0), atol=2)
    assert hot.sum() < mild.sum() < cold.sum()  # the colormap darkens with relevance


def test_image_heatmap_tints_the_relevant_box_more(request_body, response_body):
    rendered = layout(request_body, response_body)
    ix0, iy0, ix1, _ = rendered.regions["image:1"]
    scale = (ix1 - ix0) / 200

    def inside(box) -> np.ndarray:
        bx0, by0, bx1, by1 = box
        return _mean_color(rendered.image, (ix0 + (bx0 + 8) * scale, iy0 + (by0 + 8) * scale,
                                            ix0 + (bx1 - 8) * scale, iy0 + (by1 - 8) * scale))

    original = np.array([128, 128, 128])
    hot, cold, plain = inside(HOT_BOX), inside(COLD_BOX), inside([120, 10, 190, 50])  # plain: no segment there
    np.testing.assert_allclose(plain, original, atol=1)
    assert np.abs(hot - original).sum() > 3 * np.abs(cold - original).sum() > 0


def test_transcript_words_and_sentences_are_tinted(request_body, response_body):
    rendered = layout(request_body, response_body)
    x0, y0, x1, y1 = rendered.regions["message:1"]
    colors = {tuple(c) for c in np.asarray(rendered.image.crop((x0, y0, x1, y1))).reshape(-1, 3)}
    assert relevance_color(1.0) in colors  # "Where is my order?": the most relevant sentence
    assert relevance_color(0.3) in colors  # "It was due Monday." (0.03 of 0.1)
    assert "audio:2:strip" not in rendered.regions  # transcript mode: words instead of a strip
    words = np.asarray(rendered.image.crop(rendered.regions["audio:2:words"])).reshape(-1, 3)
    word_colors = {tuple(c) for c in words}
    assert relevance_color(1.0) in word_colors  # "backpack", the clip's most relevant word
    assert relevance_color(0.125) in word_colors  # "where" (0.01 of 0.08)


def test_primitives():
    assert relevance_color(0.0) == (255, 255, 255) and relevance_color(float("nan")) == (255, 255, 255)
    assert relevance_color(1.0) == relevance_color(3.0) == (127, 39, 4)
    assert normalise([0.0, 0.5, 1.0, float("nan")]) == [0.0, 0.5, 1.0, 0.0] and normalise([0, 0]) == [0.0, 0.0]
    mins, maxs = waveform_columns(np.array([0, 1, -1, 2, -2, 3], dtype=np.float32), 3)
    assert mins.tolist() == [0, -1, -2] and maxs.tolist() == [1, 2, 3]
    placed, height = layout_runs([("one two three four five six", None)], font(13), 80)
    assert height > 2 * 13 and max(p.x + p.w for p in placed) <= 80


def test_a_response_without_an_explanation_is_refused(request_body):
    with pytest.raises(ExplanationMissing):
        render(request_body, {"choices": []})


def test_undecodable_media_still_render(response_body):
    request = {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/receipt.jpg"}},
    ]}]}
    image = render(request, response_body)
    assert image.width > 0 and image.height > 0


def test_command_draws_a_saved_response(tmp_path, capsys, request_body, response_body):
    request_path, response_path, out = tmp_path / "req.json", tmp_path / "resp.json", tmp_path / "why.png"
    request_path.write_text(json.dumps(request_body))
    response_path.write_text(json.dumps(response_body))
    assert main(["explain", str(request_path), "--from-response", str(response_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Your order ships Monday" in printed
    assert "modality" in printed and "attention" in printed
    assert "audio" in printed and "37.0%" in printed and "-12.50" in printed
    assert "instructions" in printed and "10.0%" in printed
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 600


def test_request_sent_with_explain_on(monkeypatch, request_body, response_body):
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=response_body)

    body = {**request_body, "stream": True, "stream_options": {"include_usage": True}}
    got = explain.call_service(body, "http://svc:9/v1/", "k-1", transport=httpx.MockTransport(handler))
    assert got == response_body
    (sent,) = seen
    assert str(sent.url) == "http://svc:9/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer k-1"
    payload = json.loads(sent.content)
    assert payload["stream"] is False and "stream_options" not in payload
    assert payload["chorus"] == {"fusion": "both", "explain": True}  # the request's chorus fields kept
    assert payload["messages"] == request_body["messages"]


class _Refuses(BaseHTTPRequestHandler):
    """A service that answers every POST with 401 and OpenAI's error body."""

    seen_auth: list[str | None] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Refuses.seen_auth.append(self.headers.get("Authorization"))
        body = json.dumps({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                     "code": "invalid_api_key", "param": None}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_api_error_is_printed_and_exits_1(tmp_path, capsys, monkeypatch, request_body):
    server = HTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        request_path, out = tmp_path / "req.json", tmp_path / "why.png"
        request_path.write_text(json.dumps(request_body))
        monkeypatch.delenv("CHORUS_API_KEY", raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
        code = main(["explain", str(request_path), "--url", f"http://127.0.0.1:{server.server_port}", "--out", str(out)])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    err = capsys.readouterr().err
    assert "HTTP 401: Incorrect API key provided" in err and "invalid_api_key" in err
    assert "Traceback" not in err
    assert _Refuses.seen_auth == ["Bearer sk-wrong"]
    assert not out.exists()


def test_unreachable_service_and_bad_request_file_exit_1(tmp_path, capsys):
    request_path = tmp_path / "req.json"
    request_path.write_text("{not json")
    assert main(["explain", str(request_path)]) == 1
    assert "is not JSON" in capsys.readouterr().err
    request_path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["explain", str(request_path), "--url", url, "--timeout", "5"]) == 1
    assert "no answer from" in capsys.readouterr().err


def _free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
