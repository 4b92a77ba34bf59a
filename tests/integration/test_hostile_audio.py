"""test_hostile.py's corpus for the Audio API's multipart routes (transcriptions, translations):
each case gets its exact status and, when refused, OpenAI's error body naming the field; the
service still answers afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

from modalities.audio.options import MAX_PROMPT_CHARS

from .conftest import AUTH
from .test_hostile import FLAC, RNG, WAV, _still_answers

TRANSCRIPTIONS, TRANSLATIONS = "/v1/audio/transcriptions", "/v1/audio/translations"
W1 = {"model": "whisper-1"}
VERBOSE = {**W1, "response_format": "verbose_json"}
CLIP = {"file": ("a.wav", WAV)}

# (id, route, form fields, files, status, param of the error)
AUDIO_CASES = [
    ("random-bytes", TRANSCRIPTIONS, W1, {"file": ("a.wav", RNG.bytes(3000))}, 400, "file"),
    ("empty-file", TRANSCRIPTIONS, W1, {"file": ("a.wav", b"")}, 400, "file"),
    ("bad-response-format", TRANSCRIPTIONS, {**W1, "response_format": "srt-ish"}, CLIP, 400, "response_format"),
    ("bad-language", TRANSCRIPTIONS, {**W1, "language": "klingon"}, CLIP, 400, "language"),
    ("valid-flac", TRANSCRIPTIONS, W1, {"file": ("a.flac", FLAC)}, 200, None),
    # timestamp granularities
    ("unknown-granularity", TRANSCRIPTIONS, {**VERBOSE, "timestamp_granularities[]": "sentence"}, CLIP, 400, "timestamp_granularities"),
    ("word-without-verbose-json", TRANSCRIPTIONS, {**W1, "timestamp_granularities[]": "word"}, CLIP, 400, "timestamp_granularities"),
    ("word-with-srt", TRANSCRIPTIONS, {**W1, "response_format": "srt", "timestamp_granularities": "word"}, CLIP, 400, "timestamp_granularities"),
    ("granularity-as-a-file", TRANSCRIPTIONS, VERBOSE, {**CLIP, "timestamp_granularities[]": ("g.txt", b"word")}, 400, None),
    ("model-as-a-file", TRANSCRIPTIONS, {}, {**CLIP, "model": ("m.txt", b"whisper-1")}, 400, None),
    ("granularities-repeated-past-the-field-cap", TRANSCRIPTIONS, {**VERBOSE, "timestamp_granularities[]": ["word"] * 40}, CLIP, 400, None),
    ("words-and-segments", TRANSCRIPTIONS, {**VERBOSE, "timestamp_granularities[]": ["word", "segment", "word"]}, CLIP, 200, None),
    # temperature
    ("temperature-not-a-number", TRANSCRIPTIONS, {**W1, "temperature": "warm"}, CLIP, 400, "temperature"),
    ("temperature-nan", TRANSCRIPTIONS, {**W1, "temperature": "NaN"}, CLIP, 400, "temperature"),
    ("temperature-overflows-to-inf", TRANSCRIPTIONS, {**W1, "temperature": "1e309"}, CLIP, 400, "temperature"),
    ("temperature-over-one", TRANSCRIPTIONS, {**W1, "temperature": "1.5"}, CLIP, 400, "temperature"),
    ("temperature-negative", TRANSLATIONS, {**W1, "temperature": "-0.5"}, CLIP, 400, "temperature"),
    ("temperature-denormal", TRANSCRIPTIONS, {**W1, "temperature": "5e-324"}, CLIP, 200, None),
    ("temperature-one", TRANSCRIPTIONS, {**W1, "temperature": "1"}, CLIP, 200, None),
    # prompt
    ("prompt-too-long", TRANSCRIPTIONS, {**W1, "prompt": "a" * (MAX_PROMPT_CHARS + 1)}, CLIP, 400, "prompt"),
    ("prompt-spelling-special-tokens", TRANSCRIPTIONS, {**W1, "prompt": "<|endoftext|><|translate|><|de|> hi"}, CLIP, 200, None),
    ("prompt-at-the-cap", TRANSCRIPTIONS, {**W1, "prompt": "refund " * (MAX_PROMPT_CHARS // 7)}, CLIP, 200, None),
    ("prompt-nul-and-emoji", TRANSLATIONS, {**W1, "prompt": "\x00 \U0001f600 \u202e"}, CLIP, 200, None),
    # fields a route does not take
    ("unknown-field", TRANSCRIPTIONS, {**W1, "chunking_strategy": "auto"}, CLIP, 400, "chunking_strategy"),
    ("stream-is-ignored", TRANSCRIPTIONS, {**W1, "stream": "true"}, CLIP, 200, None),
    ("translation-with-language", TRANSLATIONS, {**W1, "language": "de"}, CLIP, 400, "language"),
    ("translation-with-granularities", TRANSLATIONS, {**W1, "timestamp_granularities[]": "word"}, CLIP, 400, "timestamp_granularities[]"),
    # translations
    ("translation-random-bytes", TRANSLATIONS, W1, {"file": ("a.wav", RNG.bytes(3000))}, 400, "file"),
    ("translation-bad-format", TRANSLATIONS, {**W1, "response_format": "diarized_json"}, CLIP, 400, "response_format"),
    ("translation-unknown-model", TRANSLATIONS, {"model": "gpt-4o-transcribe"}, CLIP, 404, "model"),
    ("translation-valid-flac-vtt", TRANSLATIONS, {**W1, "response_format": "vtt"}, {"file": ("a.flac", FLAC)}, 200, None),
]


@pytest.mark.parametrize("case,route,data,files,status,param", AUDIO_CASES, ids=[c[0] for c in AUDIO_CASES])
def test_audio_hostile_input(serve_url, case, route, data, files, status, param):
    resp = httpx.post(f"{serve_url}{route}", data=data, files=files, headers=AUTH, timeout=120)
    assert resp.status_code == status, resp.text[:500]
    if status >= 400:
        error = resp.json()["error"]
        assert error["message"] and len(resp.content) < 2000  # small, and never echoes the input
        if param is not None:
            assert error["param"] == param, error
    _still_answers(serve_url)


@pytest.mark.parametrize("route", [TRANSCRIPTIONS, TRANSLATIONS])
def test_not_multipart(serve_url, route):
    resp = httpx.post(f"{serve_url}{route}", json={"model": "whisper-1"}, headers=AUTH, timeout=30)
    assert resp.status_code == 400 and json.loads(resp.text)["error"]["code"] == "invalid_request"
