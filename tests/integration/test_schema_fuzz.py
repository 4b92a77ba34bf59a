"""Schemathesis against the live service, driven by the service's own /openapi.json.

More than a thousand generated requests (schema-conforming and schema-violating) across the four
operations, with the API key. Every response: never a 5xx; a status the document lists for the
operation; a content type and body that match what it documents; every 4xx in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}`; `n` other than 1 refused with 400; a request
without the right key refused with 401.

Generation cost is capped so that the run stays short: completions get at most 2 tokens, most
requests name the served model (the rest keep the generated name and must get 404 or 400), a
few media parts are swapped for tiny valid media (a 4x4 PNG; at most a handful of 0.2 s WAVs, since
each costs a Whisper pass), and the GET routes (no parameters: little to generate) get few examples.
Run with `-s` to see the counts, the status histogram and where the time went (almost all of it in
the ~200 completions that reach the decoder). The 500s it found (a denormal temperature or top_p
broke sampling) are regression cases in test_hostile.py.
"""

from __future__ import annotations

import base64
import collections
import io
import math
import time
import zlib
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
import soundfile as sf
from hypothesis import HealthCheck, Phase, given, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import AUTH

MIN_TOTAL_CASES = 1_000
# (method, path) -> examples per generation mode. Chat carries the weight; the GET routes take no
# parameters, so Hypothesis soon runs out of distinct inputs there anyway.
EXAMPLES = {
    ("POST", "/v1/chat/completions"): {GenerationMode.POSITIVE: 520, GenerationMode.NEGATIVE: 330},
    ("POST", "/v1/audio/transcriptions"): {GenerationMode.POSITIVE: 150, GenerationMode.NEGATIVE: 100},
    ("GET", "/v1/models"): {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 10},
    ("GET", "/v1/models/{model}"): {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10},
    ("GET", "/metrics"): {GenerationMode.POSITIVE: 5, GenerationMode.NEGATIVE: 5},
    ("GET", "/health"): {GenerationMode.POSITIVE: 5},
}
MAX_TOKENS = 2
MAX_AUDIO_SWAPS = 3  # per route: each valid clip costs a Whisper pass
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ERROR_KEYS = {"message", "type", "param", "code"}


def _png_data_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 10)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _wav(seconds: float = 0.2) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(16_000 * seconds)) / 16_000
    sf.write(buf, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16_000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


TINY_PNG_URL = _png_data_url()
TINY_WAV = _wav()


def _pick(value: Any, one_in: int) -> bool:
    """A deterministic 1-in-`one_in` choice keyed on a generated value (same case, same choice)."""
    return zlib.crc32(repr(value).encode("utf-8", "backslashreplace")) % one_in == 0


class CostCap:
    """Rewrites generated cases so that they are cheap to serve, without making them less hostile."""

    def __init__(self) -> None:
        self.audio_swaps: collections.Counter[str] = collections.Counter()

    def chat(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                body[key] = MAX_TOKENS
            elif isinstance(value, float) and math.isfinite(value) and value > MAX_TOKENS:
                body[key] = float(MAX_TOKENS)
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = MAX_TOKENS
        if isinstance(body.get("model"), str) and not _pick(body["model"], 8):
            body["model"] = "chorus"
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else []:
            content = message.get("content") if isinstance(message, dict) else None
            for part in content if isinstance(content, list) else []:
                self._media(part)

    def _media(self, part: Any) -> None:
        if not isinstance(part, dict):
            return
        image = part.get("image_url")
        if isinstance(image, dict) and isinstance(image.get("url"), str) and not _pick(image["url"], 2):
            image["url"] = TINY_PNG_URL
        audio = part.get("input_audio")
        if (
            isinstance(audio, dict)
            and audio.get("format") == "wav"
            and isinstance(audio.get("data"), str)
            and self.audio_swaps["chat"] < MAX_AUDIO_SWAPS
        ):
            self.audio_swaps["chat"] += 1
            audio["data"] = base64.b64encode(TINY_WAV).decode()

    def transcription(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if isinstance(body.get("model"), str) and not _pick(body["model"], 6):
            body["model"] = "whisper-1"
        if "file" in body and self.audio_swaps["transcription"] < MAX_AUDIO_SWAPS and _pick(body, 10):
            self.audio_swaps["transcription"] += 1
            body["file"] = TINY_WAV


@pytest.fixture(scope="module")
def api_schema(serve_url):
    return schemathesis.openapi.from_url(f"{serve_url}/openapi.json", timeout=60)


def _negates_headers(case) -> bool:
    components = case.meta.components if case.meta is not None else {}
    return any(getattr(where, "value", where) == "header" and info.mode is GenerationMode.NEGATIVE
               for where, info in components.items())


def _check_error_shape(response: Response, label: str) -> None:
    content_type = response.headers.get("content-type", [""])[0]  # schemathesis: lowercase keys, list values
    assert content_type.startswith("application/json"), (label, response.text[:300])
    error = response.json().get("error")
    assert isinstance(error, dict) and set(error) == ERROR_KEYS, (label, response.text[:300])
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)


def test_schemathesis_against_live_service(serve_url, api_schema):
    operations = {(op.method.upper(), op.path): op for op in (r.ok() for r in api_schema.get_all_operations())}
    assert set(operations) == set(EXAMPLES), sorted(operations)

    cap = CostCap()
    session = requests.Session()
    counts: collections.Counter[str] = collections.Counter()
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    seconds: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    started = time.monotonic()

    def fuzz(key: tuple[str, str], mode: GenerationMode, max_examples: int) -> None:
        label = f"{key[0]} {key[1]}"

        strategy = operations[key].as_strategy(generation_mode=mode)
        if key[0] == "POST" and mode is GenerationMode.NEGATIVE:
            # Spend the POST routes' negative cases on bodies: a negated header only drops the API
            # key (a 401, which the GET route and the kept wrong keys cover), so keep 1 in 16 of those.
            strategy = strategy.filter(lambda case: not _negates_headers(case) or _pick((case.headers, case.body), 16))

        @settings(
            max_examples=max_examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            print_blob=True,
        )
        @given(case=strategy)
        def run(case) -> None:
            if key[1] == "/v1/chat/completions":
                cap.chat(case.body)
            elif key[1] == "/v1/audio/transcriptions":
                cap.transcription(case.body)
            generated_auth = (case.headers or {}).get("Authorization")
            # One in 16 requests keeps the generated (wrong) Authorization header; negative cases that
            # negate the header drop it whatever we pass.
            keep_auth = generated_auth is not None and _pick((generated_auth, case.body), 16)
            headers = None if keep_auth else AUTH
            sent = time.monotonic()
            response = case.call(base_url=serve_url, session=session, headers=headers, timeout=120)
            seconds[label][response.status_code // 100 * 100] += time.monotonic() - sent
            counts[f"{label} {mode.value}"] += 1
            statuses[label][response.status_code] += 1

            assert response.status_code < 500, (label, response.status_code, response.text[:300], repr(case.body)[:1500])
            if 400 <= response.status_code < 500:
                _check_error_shape(response, label)
            authorized = response.request.headers.get("Authorization") == AUTH["Authorization"]
            if not authorized and key[1] != "/health":
                assert response.status_code == 401, (label, response.text[:300])
            body = case.body
            n = body.get("n") if isinstance(body, dict) else None
            if key[1] == "/v1/chat/completions" and authorized and isinstance(n, int) and not isinstance(n, bool) and n != 1:
                assert response.status_code == 400, (label, n, response.text[:300])
            model = body.get("model") if isinstance(body, dict) else None
            served = {"/v1/chat/completions": {"chorus"}, "/v1/audio/transcriptions": {"whisper-1", "whisper-base"}}
            if authorized and key[1] in served and isinstance(model, str) and model not in served[key[1]]:
                assert response.status_code in (400, 404), (label, model, response.text[:300])  # never served
            case.validate_response(response, checks=CHECKS, headers=headers)

        run()

    for key, modes in EXAMPLES.items():
        for mode, max_examples in modes.items():
            fuzz(key, mode, max_examples)

    elapsed = time.monotonic() - started
    total = sum(counts.values())
    print(f"\nschemathesis: {total} cases in {elapsed:.0f} s")
    for name, count in sorted(counts.items()):
        print(f"  {name}: {count}")
    for label, histogram in sorted(statuses.items()):
        print(f"  {label} statuses: {dict(sorted(histogram.items()))}")
        print(f"  {label} seconds by status class: { {k: round(v, 1) for k, v in sorted(seconds[label].items())} }")
    print(f"  valid WAVs swapped in: {dict(cap.audio_swaps)}")
    assert total >= MIN_TOTAL_CASES, counts
    # both kinds of data reached the two POST routes
    for label in ("POST /v1/chat/completions", "POST /v1/audio/transcriptions"):
        assert counts[f"{label} positive"] > 0 and counts[f"{label} negative"] > 0, counts
