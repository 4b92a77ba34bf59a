"""The OpenAI-compatible API over real HTTP against a real Serve app, with the official client."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from bench.service import parse_server_timing
from modalities.speech import synthesize, to_wav_bytes

from .conftest import API_KEY, AUTH

SPOKEN = "Please cancel my order and send me a refund."


@pytest.fixture(scope="module")
def wav_b64():
    return base64.b64encode(to_wav_bytes(synthesize(SPOKEN))).decode()


def png_data_url(size=(40, 30), color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(client, content, **kwargs):
    kwargs = {"max_tokens": 8, "temperature": 0, **kwargs}
    return client.chat.completions.create(model="chorus", messages=[{"role": "user", "content": content}], **kwargs)


def test_models_lists_chat_and_whisper(client):
    ids = {m.id for m in client.models.list().data}
    assert {"chorus", "whisper-1", "whisper-base"} <= ids


def test_health_reports_each_deployment(serve_url):
    body = httpx.get(f"{serve_url}/health", timeout=30).json()
    assert body["status"] == "ok"
    assert set(body["deployments"]) == {"audio_encoder", "vision_encoder", "llm_decoder", "speech"}
    assert all(d["status"] == "ok" for d in body["deployments"].values())


def test_text_non_streaming(client):
    resp = ask(client, "What is the capital of France?", max_completion_tokens=12)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")


def test_streaming_matches_non_streaming_and_reports_usage(client):
    question = "Name a colour."
    full = ask(client, question)
    chunks = list(ask(client, question, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content  # greedy: same tokens either way
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_raw_sse_framing(serve_url):
    body = {"model": "chorus", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{serve_url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
        timing = parse_server_timing(resp.headers.get("server-timing"))
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"
    # Where the time to first token went: the decoder's share is inside the ingress's.
    assert set(timing) == {"ingress", "prep", "decoder"}
    assert 0 < timing["prep"] and 0 < timing["decoder"] and timing["prep"] + timing["decoder"] < timing["ingress"] < 60


def test_multi_turn_history_counts(client):
    short = ask(client, "And the weather?")
    history = [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "My parcel is late."},
        {"role": "assistant", "content": "Sorry to hear that. What is your order number?"},
        {"role": "user", "content": "And the weather?"},
    ]
    resp = client.chat.completions.create(model="chorus", messages=history, max_tokens=8, temperature=0)
    assert resp.usage.prompt_tokens > short.usage.prompt_tokens + 15
    assert resp.choices[0].message.content


def test_a_chat_turn_reuses_the_earlier_turns_from_the_prefix_cache(client, serve_url):
    """The OpenAI API re-sends the history every turn: the decoder takes what it has seen from its
    prefix cache (its /health counters say so) and answers as it would have computed it."""

    def hits() -> int:
        return httpx.get(f"{serve_url}/health", timeout=30).json()["deployments"]["llm_decoder"]["engine_stats"][
            "prefix_hit_tokens"
        ]

    history = [
        {"role": "system", "content": "You are Chorus, the parcel service's assistant. Answer in one sentence."},
        {"role": "user", "content": "My parcel 4471 is late. Where is it?"},
    ]
    first = client.chat.completions.create(model="chorus", messages=history, max_tokens=12, temperature=0)
    before = hits()
    again = client.chat.completions.create(model="chorus", messages=history, max_tokens=12, temperature=0)
    reused = hits() - before
    assert again.choices[0].message.content == first.choices[0].message.content
    prompt = first.usage.prompt_tokens
    assert prompt - 8 <= reused < prompt, (reused, prompt)  # every full block but the one holding the last position


def test_seed_reproducible(client):
    kwargs = dict(temperature=1.0, seed=1234, max_tokens=10)
    a = ask(client, "Tell me a word.", **kwargs).choices[0].message.content
    b = ask(client, "Tell me a word.", **kwargs).choices[0].message.content
    assert a == b


def test_image_tokens_reach_the_decoder(client):
    text_only = ask(client, "Describe it.")
    image = [{"type": "text", "text": "Describe it."}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
    embedded = ask(client, image, extra_body={"chorus": {"fusion": {"image": "embed"}, "return_media_text": True}})
    assert [item["mode"] for item in embedded.model_extra["chorus"]["media"]] == ["embed"]
    # tiny CLIP: 32 px / 8 px patches = 16 soft tokens, plus the <image></image> delimiters
    assert embedded.usage.prompt_tokens - text_only.usage.prompt_tokens >= 16
    # the default reads it (ocr): no text on it, and the prompt says so instead
    read = ask(client, image, extra_body={"chorus": {"return_media_text": True}})
    assert [(item["mode"], item["lines"]) for item in read.model_extra["chorus"]["media"]] == [("ocr", [])]


@pytest.mark.parametrize("mode", ["transcript", "embed", "both"])
def test_audio_in_each_fusion_mode(client, wav_b64, mode):
    content = [
        {"type": "text", "text": "The caller said:"},
        {"type": "input_audio", "input_audio": {"data": wav_b64, "format": "wav"}},
    ]
    resp = ask(client, content, extra_body={"chorus": {"fusion": mode}})
    assert resp.choices[0].message.content is not None
    baseline = ask(client, "The caller said:").usage.prompt_tokens
    extra = resp.usage.prompt_tokens - baseline
    if mode == "transcript":
        assert 5 <= extra < 40  # the transcript's words
    else:
        assert extra >= 2.0 * 50 / 4  # ≥ 2 s of speech at 50 frames/s, 4 frames per soft token


def test_transcriptions_formats(client, wav_b64):
    wav = base64.b64decode(wav_b64)
    text = client.audio.transcriptions.create(model="whisper-1", file=("call.wav", wav, "audio/wav"))
    assert "refund" in text.text.lower() and "cancel my order" in text.text.lower()
    plain = client.audio.transcriptions.create(model="whisper-base", file=("c.wav", wav), response_format="text")
    assert "refund" in str(plain).lower()
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav), response_format="verbose_json")
    assert verbose.duration > 2 and verbose.segments and verbose.language == "english" and verbose.words is None
    segment = verbose.segments[0]
    assert segment.id == 0 and segment.tokens and segment.avg_logprob < 0 and 0 <= segment.no_speech_prob <= 1
    assert segment.temperature == 0.0 and segment.compression_ratio > 0 and segment.seek == 0
    srt = client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav), response_format="srt")
    assert str(srt).startswith("1\n00:00:0") and " --> 00:00:0" in str(srt) and "refund" in str(srt).lower()
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav), response_format="vtt")
    assert str(vtt).startswith("WEBVTT\n\n00:00:0") and "refund" in str(vtt).lower()


def test_transcription_word_timestamps_with_the_openai_client(client, wav_b64):
    wav = base64.b64decode(wav_b64)
    verbose = client.audio.transcriptions.create(
        model="whisper-1",
        file=("call.wav", wav, "audio/wav"),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        prompt="Order cancellations and refunds.",
        temperature=0,
    )
    words = verbose.words
    assert words and verbose.segments and "refund" in verbose.text.lower()
    spoken = [w.word.strip(" .,").lower() for w in words]
    assert spoken[:3] == ["please", "cancel", "my"] and spoken[-1] == "refund"
    # in order, each inside the clip, none running backwards
    assert all(0 <= w.start <= w.end <= verbose.duration for w in words)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:]))
    only_words = client.audio.transcriptions.create(
        model="whisper-1", file=("c.wav", wav), response_format="verbose_json", timestamp_granularities=["word"]
    )
    assert only_words.words and only_words.segments is None  # as OpenAI answers
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav), timestamp_granularities=["word"])
    assert info.value.body["param"] == "timestamp_granularities"


def test_translations_with_the_openai_client(client, wav_b64):
    wav = base64.b64decode(wav_b64)
    translation = client.audio.translations.create(model="whisper-1", file=("call.wav", wav, "audio/wav"))
    assert "refund" in translation.text.lower()
    verbose = client.audio.translations.create(
        model="whisper-1", file=("call.wav", wav), response_format="verbose_json", prompt="A customer call.", temperature=0.2
    )
    assert verbose.language == "english" and verbose.duration > 2 and verbose.segments and verbose.text
    assert verbose.segments[0].temperature == pytest.approx(0.2)  # sampled, so the words may vary
    srt = client.audio.translations.create(model="whisper-base", file=("call.wav", wav), response_format="srt")
    assert str(srt).startswith("1\n00:00:0") and "refund" in str(srt).lower()


# --- errors: OpenAI's body, the right status, a precise param --------------------------------


def post(serve_url, body, raw=False):
    kwargs = {"content": body} if raw else {"json": body}
    return httpx.post(f"{serve_url}/v1/chat/completions", headers=AUTH, timeout=60, **kwargs)


def assert_error(resp, status, param=None, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code


def msg(text="hi"):
    return [{"role": "user", "content": text}]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=msg())
    assert info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    "body,param,code",
    [
        ({"model": "chorus", "messages": msg(), "n": 2}, "n", None),
        ({"model": "chorus", "messages": msg(), "temperature": -1}, "temperature", None),
        ({"model": "chorus", "messages": msg(), "top_p": 0}, "top_p", None),
        ({"model": "chorus", "messages": msg(), "max_tokens": 100000}, "messages", "context_length_exceeded"),
        ({"model": "chorus", "messages": msg(), "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
        ({"model": "chorus", "messages": [{"role": "robot", "content": "x"}]}, None, None),
        ({"model": "chorus", "messages": []}, "messages", None),
        ({"messages": msg()}, "model", None),
        ({"model": "chorus", "messages": msg(), "tools": []}, "tools", None),
        (
            {"model": "chorus", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}]},
            "messages.0.content.0.input_audio.data",
            "invalid_base64",
        ),
        (
            # remote images are on in the test app, for allowlisted hosts only (the off switch: test_fetch)
            {"model": "chorus", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://images.evil.net/a.png"}}]}]},
            "messages.0.content.0.image_url.url",
            "remote_host_not_allowed",
        ),
    ],
)
def test_bad_requests_are_400(serve_url, body, param, code):
    assert_error(post(serve_url, body), 400, param, code)


def test_invalid_json_is_400(serve_url):
    assert_error(post(serve_url, b"{not json", raw=True), 400, code="invalid_json")


def test_garbage_audio_is_400_and_service_survives(client, serve_url):
    junk = base64.b64encode(np.random.default_rng(0).bytes(4000)).decode()
    body = {"model": "chorus", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": junk, "format": "wav"}}]}]}
    assert_error(post(serve_url, body), 400, "messages.0.content.0")
    assert ask(client, "Still there?").choices[0].message.content is not None


def test_transcription_errors(serve_url, wav_b64):
    url = f"{serve_url}/v1/audio/transcriptions"
    wav = base64.b64decode(wav_b64)
    assert_error(httpx.post(url, data={"model": "nope"}, files={"file": ("a.wav", wav)}, headers=AUTH, timeout=60), 404, "model")
    assert_error(httpx.post(url, data={"model": "whisper-1"}, headers=AUTH, timeout=60), 400)
    bad = httpx.post(url, data={"model": "whisper-1"}, files={"file": ("a.wav", b"RIFF1234garbage")}, headers=AUTH, timeout=60)
    assert_error(bad, 400, "file")


def test_concurrent_streams_all_complete(serve_url):
    """Several streams at once share the decoder (token-level interleaving) and all finish."""
    import asyncio

    async def one(i: int) -> tuple[str, str]:
        body = {
            "model": "chorus",
            "messages": [{"role": "user", "content": f"Count to {i + 2}."}],
            "max_tokens": 6,
            "temperature": 0,
            "stream": True,
        }
        async with httpx.AsyncClient(timeout=120, headers=AUTH) as http:
            async with http.stream("POST", f"{serve_url}/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                events = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
        finish = json.loads(events[-2])["choices"][0]["finish_reason"]
        return events[-1], finish

    async def main():
        return await asyncio.gather(*(one(i) for i in range(4)))

    results = asyncio.run(main())
    assert all(done == "[DONE]" and finish in ("stop", "length") for done, finish in results)


def test_prometheus_metrics_exported(client, metrics_port):
    """Requests, errors, TTFT and encoder metrics reach Ray's Prometheus endpoint."""
    import time

    ask(client, "Hello!")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=msg())
    wanted = ["ray_chorus_requests_total", "ray_chorus_errors_total", "ray_chorus_time_to_first_token_s"]
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        if all(name in text for name in wanted):
            break
        time.sleep(3)
    missing = [name for name in wanted if name not in text]
    assert not missing, f"not exported: {missing}"
    assert 'route="/v1/chat/completions"' in text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
def test_api_key_required_when_configured(serve_url, headers):
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("POST", "/v1/audio/transcriptions")):
        resp = httpx.request(method, f"{serve_url}{path}", json={"model": "chorus", "messages": msg()}, headers=headers, timeout=30)
        assert_error(resp, 401, code="invalid_api_key")
    assert httpx.get(f"{serve_url}/health", timeout=30).status_code == 200  # health stays open


def test_oversized_body_is_413(serve_url):
    big = b'{"model": "chorus", "messages": [{"role": "user", "content": "' + b"a" * (41 * 2**20) + b'"}]}'
    assert_error(post(serve_url, big, raw=True), 413, code="request_too_large")


def test_disconnect_mid_stream_frees_the_decoder(serve_url):
    """A client that goes away mid-stream stops its generation: the decoder's stream count drops."""
    import time

    def active() -> int:
        return httpx.get(f"{serve_url}/health", timeout=30).json()["deployments"]["llm_decoder"]["active_streams"]

    body = {
        "model": "chorus",
        "messages": msg("Write a very long story about a lost parcel."),
        "max_tokens": 400,
        "stream": True,
    }
    with httpx.stream("POST", f"{serve_url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as resp:
        lines = resp.iter_lines()
        seen = 0
        for line in lines:
            seen += line.startswith("data: ")
            if seen >= 4:
                break
        assert active() >= 1
    # the connection is closed here, ~396 tokens early; finishing them would take far longer than
    # this (~10 tokens/s here), so only a real cancellation gets the count to 0 in time
    deadline = time.monotonic() + 10
    while active() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert active() == 0
