"""Schemathesis against the live service, driven by the service's own /openapi.json.

More than a thousand generated requests (schema-conforming and schema-violating) across every
operation (chat, transcriptions, translations, speech, models, metrics, health, and the stored APIs:
Responses and Conversations), with the API key. Every response: never a 5xx; a status the document lists for the
operation; a content type and body that match what it documents; every 4xx in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}`; `n` other than 1 refused with 400; a request
without the right key refused with 401.

Generation cost is capped so that the run stays short: completions get at most 2 tokens, most
requests name the served model (the rest keep the generated name and must get 404 or 400), a
few media parts are swapped for tiny valid media (a 4x4 PNG; at most a handful of 0.2 s WAVs, since
each costs a Whisper pass), and the GET routes (no parameters: little to generate) get few examples. POST /v1/responses is
capped the same way (`max_output_tokens` at most 2, the served model mostly, tiny valid media). The
stored APIs' path ids are generated (404s), and one in two is swapped for a real object's id
(`RealIds`), so that their 200s are checked against the document too; a DELETE deletes an object
made for it. The stored APIs' share of the run is printed (about a minute on 2 cores).
Speech gets a served model and a known voice mostly, and at most 160 characters to say; its 200s
(binary audio, or SSE) must carry the requested format's content type (`_check_speech`).
Run with `-s` to see the counts, the status histogram and where the time went (almost all of it in
the ~200 completions that reach the decoder). The 500s it found (a denormal temperature or top_p
broke sampling) are regression cases in test_hostile.py.
"""

from __future__ import annotations

import base64
import collections
import io
import json
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
    ("POST", "/v1/audio/translations"): {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40},
    # speech: a 200 is audio in the requested format (binary, chunked) or speech SSE events
    ("POST", "/v1/audio/speech"): {GenerationMode.POSITIVE: 120, GenerationMode.NEGATIVE: 80},
    ("GET", "/v1/models"): {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 10},
    ("GET", "/v1/models/{model}"): {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10},
    ("GET", "/metrics"): {GenerationMode.POSITIVE: 5, GenerationMode.NEGATIVE: 5},
    ("GET", "/health"): {GenerationMode.POSITIVE: 5},
    # The stored APIs. Responses reach the decoder (capped like chat); the rest are store calls.
    # Path ids are generated (404s), and half are swapped for real objects (`RealIds`).
    ("POST", "/v1/responses"): {GenerationMode.POSITIVE: 160, GenerationMode.NEGATIVE: 100},
    ("GET", "/v1/responses/{response_id}"): {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6},
    ("DELETE", "/v1/responses/{response_id}"): {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6},
    ("POST", "/v1/responses/{response_id}/cancel"): {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6},
    ("GET", "/v1/responses/{response_id}/input_items"): {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 30},
    ("POST", "/v1/conversations"): {GenerationMode.POSITIVE: 80, GenerationMode.NEGATIVE: 60},
    ("GET", "/v1/conversations"): {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20},
    ("GET", "/v1/conversations/{conversation_id}"): {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6},
    ("POST", "/v1/conversations/{conversation_id}"): {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 30},
    ("DELETE", "/v1/conversations/{conversation_id}"): {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6},
    ("GET", "/v1/conversations/{conversation_id}/items"): {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 30},
    ("POST", "/v1/conversations/{conversation_id}/items"): {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40},
    ("GET", "/v1/conversations/{conversation_id}/items/{item_id}"): {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6},
    ("DELETE", "/v1/conversations/{conversation_id}/items/{item_id}"): {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6},
}
STORED_PREFIXES = ("/v1/responses", "/v1/conversations")
AUDIO_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")
MAX_TOKENS = 2
MAX_FRESH = 8  # per DELETE route: objects made to be deleted (a response costs a decoder run)
MAX_AUDIO_SWAPS = 3  # per route: each valid clip costs a Whisper pass
MAX_SPEECH_CHARS = 160  # what a speech request may have spoken (each character costs synthesis)
SPEECH_MODELS = {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "hibari"}
SPEECH_CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
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

    def apply(self, key: tuple[str, str], body: Any, ids: RealIds) -> None:
        """The cap for operation `key` (method, path template), applied to its generated body."""
        if key[1] == "/v1/chat/completions":
            self.chat(body)
        elif key[1] in AUDIO_ROUTES:
            self.transcription(body, key[1])
        elif key[1] == "/v1/audio/speech":
            self.speech(body)
        elif key == ("POST", "/v1/responses"):
            self.response(body, ids)
        elif key[0] == "POST" and key[1] in ("/v1/conversations", "/v1/conversations/{conversation_id}/items"):
            self.conversation_items(body)

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

    def _media(self, part: Any, route: str = "chat") -> None:
        if not isinstance(part, dict):
            return
        image = part.get("image_url")
        if isinstance(image, dict) and isinstance(image.get("url"), str) and not _pick(image["url"], 2):
            image["url"] = TINY_PNG_URL
        elif isinstance(image, str) and not _pick(image, 2):  # Responses: `input_image.image_url` is the URL
            part["image_url"] = TINY_PNG_URL
        audio = part.get("input_audio")
        if (
            isinstance(audio, dict)
            and audio.get("format") == "wav"
            and isinstance(audio.get("data"), str)
            and self.audio_swaps[route] < MAX_AUDIO_SWAPS
        ):
            self.audio_swaps[route] += 1
            audio["data"] = base64.b64encode(TINY_WAV).decode()

    def response(self, body: Any, ids: RealIds) -> None:
        """POST /v1/responses: at most MAX_TOKENS (`max_output_tokens`), the served model mostly,
        tiny valid media, and now and then a real `previous_response_id` or `conversation`."""
        if not isinstance(body, dict):
            return
        value = body.get("max_output_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body["max_output_tokens"] = MAX_TOKENS
        elif isinstance(value, float) and math.isfinite(value) and value > MAX_TOKENS:
            body["max_output_tokens"] = float(MAX_TOKENS)
        elif "max_output_tokens" not in body:
            body["max_output_tokens"] = MAX_TOKENS
        if isinstance(body.get("model"), str) and not _pick(body["model"], 8):
            body["model"] = "chorus"
        if isinstance(body.get("previous_response_id"), str) and _pick(body["previous_response_id"], 2):
            body["previous_response_id"] = ids.response
        conversation = body.get("conversation")
        if isinstance(conversation, str) and _pick(conversation, 2):
            body["conversation"] = ids.responses_conversation
        elif isinstance(conversation, dict) and isinstance(conversation.get("id"), str) and _pick(conversation["id"], 2):
            conversation["id"] = ids.responses_conversation
        self._items(body.get("input"), "responses")

    def conversation_items(self, body: Any) -> None:
        """POST /v1/conversations and .../items: media in items is stored, never decoded; swap
        some for valid media anyway so that what is stored is what a response could read."""
        if isinstance(body, dict):
            self._items(body.get("items"), "items")

    def _items(self, items: Any, route: str) -> None:
        for item in items if isinstance(items, list) else []:
            content = item.get("content") if isinstance(item, dict) else None
            for part in content if isinstance(content, list) else []:
                self._media(part, route)

    def speech(self, body: Any) -> None:
        """POST /v1/audio/speech: a served model and a known voice mostly (so that 200s are checked
        against the document), and at most MAX_SPEECH_CHARS to say (a longer input, refused
        anyway, stays as it is)."""
        if not isinstance(body, dict):
            return
        if isinstance(body.get("model"), str) and not _pick(body["model"], 8):
            body["model"] = "tts-1"
        if isinstance(body.get("voice"), str) and not _pick(body["voice"], 3):
            body["voice"] = "alloy"
        text = body.get("input")
        if isinstance(text, str) and len(text) <= 4096:
            body["input"] = text[:MAX_SPEECH_CHARS]

    def transcription(self, body: Any, route: str) -> None:
        if not isinstance(body, dict):
            return
        if isinstance(body.get("model"), str) and not _pick(body["model"], 6):
            body["model"] = "whisper-1"
        if "file" in body and self.audio_swaps[route] < MAX_AUDIO_SWAPS and _pick(body, 10):
            self.audio_swaps[route] += 1
            body["file"] = TINY_WAV


class RealIds:
    """Objects of the stored APIs (API key AUTH) for the generated path ids to be swapped for, one
    in two (keyed on the generated value): a conversation with items, a response; a DELETE gets
    an object made for it (at most MAX_FRESH per route), so the others stay."""

    def __init__(self, base: str, session: requests.Session) -> None:
        self.base, self.session = base, session
        self.fresh: collections.Counter[str] = collections.Counter()
        self.conversation, self.item = self._conversation()
        self.responses_conversation, _ = self._conversation()  # responses append here, not to the one above
        self.response = self._response()
        self.input_item = self._get(f"/v1/responses/{self.response}/input_items")["data"][0]["id"]

    def _post(self, path: str, body: dict) -> dict:
        resp = self.session.post(self.base + path, json=body, headers=AUTH, timeout=120)
        assert resp.status_code == 200, resp.text[:300]
        return resp.json()

    def _get(self, path: str) -> dict:
        resp = self.session.get(self.base + path, headers=AUTH, timeout=60)
        assert resp.status_code == 200, resp.text[:300]
        return resp.json()

    def _conversation(self) -> tuple[str, str]:
        items = [{"role": "user", "content": "Where is my parcel?"}, {"role": "assistant", "content": "On its way."}]
        conversation = self._post("/v1/conversations", {"items": items, "metadata": {"case": "schemathesis"}})["id"]
        return conversation, self._get(f"/v1/conversations/{conversation}/items?order=asc")["data"][0]["id"]

    def _response(self) -> str:
        return self._post("/v1/responses", {"model": "chorus", "input": "hi", "max_output_tokens": MAX_TOKENS})["id"]

    def swap(self, key: tuple[str, str], case) -> None:
        query = case.query
        if key == ("GET", "/v1/conversations") and isinstance(query, dict) and isinstance(query.get("after"), str):
            if _pick(query["after"], 2):
                query["after"] = self.conversation  # the list, paged from a real conversation
            return
        params = case.path_parameters
        if not params or not all(isinstance(v, str) for v in params.values()) or not _pick(sorted(params.items()), 2):
            return
        method, path = key
        doomed = method == "DELETE" and self.fresh[path] < MAX_FRESH
        if method == "DELETE" and not doomed:
            return  # past the budget: the generated id stays (a 404)
        if doomed:
            self.fresh[path] += 1
        if "response_id" in params:
            params["response_id"] = self._response() if doomed else self.response
        if "conversation_id" in params:
            conversation, item = self._conversation() if doomed else (self.conversation, self.item)
            params["conversation_id"] = conversation
            if "item_id" in params:
                params["item_id"] = item
        query = case.query
        if isinstance(query, dict) and isinstance(query.get("after"), str) and _pick(query["after"], 2):
            query["after"] = self.input_item if "response_id" in params else self.item


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


def _check_speech(key: tuple[str, str], body: Any, response: Response, seen: collections.Counter[str]) -> None:
    """A speech 200: the requested format's content type (the document lists them all, so
    schemathesis alone would take mp3 for wav), or SSE events ending in `speech.audio.done`."""
    if key[1] != "/v1/audio/speech" or response.status_code != 200:
        return
    content_type = response.headers.get("content-type", [""])[0]
    seen[content_type.split(";")[0]] += 1
    if isinstance(body, dict) and body.get("stream_format") == "sse":
        assert content_type.startswith("text/event-stream"), content_type
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1]["type"] == "speech.audio.done", response.text[-300:]
    else:
        fmt = body.get("response_format", "mp3") if isinstance(body, dict) else "mp3"
        assert content_type.startswith(SPEECH_CONTENT_TYPES[fmt]), (fmt, content_type)


def test_schemathesis_against_live_service(serve_url, api_schema):
    operations = {(op.method.upper(), op.path): op for op in (r.ok() for r in api_schema.get_all_operations())}
    assert set(operations) == set(EXAMPLES), sorted(operations)

    cap = CostCap()
    session = requests.Session()
    ids = RealIds(serve_url, session)
    counts: collections.Counter[str] = collections.Counter()
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    seconds: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    speech_types: collections.Counter[str] = collections.Counter()
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
            cap.apply(key, case.body, ids)
            ids.swap(key, case)
            generated_auth = (case.headers or {}).get("Authorization")
            # One in 16 requests keeps the generated (wrong) Authorization header; negative cases that
            # negate the header drop it whatever we pass.
            keep_auth = generated_auth is not None and _pick((generated_auth, case.body), 16)
            # a copy: with a session, schemathesis merges the session's headers into the dict it is given
            headers = None if keep_auth else dict(AUTH)
            sent = time.monotonic()
            response = case.call(base_url=serve_url, session=session, headers=headers, timeout=120)
            seconds[label][response.status_code // 100 * 100] += time.monotonic() - sent
            counts[f"{label} {mode.value}"] += 1
            statuses[label][response.status_code] += 1
            _check_speech(key, case.body, response, speech_types)

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
            served = {
                "/v1/chat/completions": {"chorus"},
                "/v1/audio/transcriptions": {"whisper-1", "whisper-base"},
                "/v1/audio/translations": {"whisper-1", "whisper-base"},
                "/v1/responses": {"chorus"},
                "/v1/audio/speech": SPEECH_MODELS,
            }
            if authorized and key[1] in served and isinstance(model, str) and model not in served[key[1]]:
                assert response.status_code in (400, 404), (label, model, response.text[:300])  # never served
            case.validate_response(response, checks=CHECKS, headers=headers)

        run()

    stored_s = 0.0
    for key, modes in EXAMPLES.items():
        began = time.monotonic()
        for mode, max_examples in modes.items():
            fuzz(key, mode, max_examples)
        if key[1].startswith(STORED_PREFIXES):
            stored_s += time.monotonic() - began

    elapsed = time.monotonic() - started
    print(f"\nthe stored APIs' operations (generation included): {stored_s:.0f} s; objects made to be deleted: {dict(ids.fresh)}")
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
    for label in ("POST /v1/chat/completions", "POST /v1/audio/transcriptions", "POST /v1/audio/translations",
                  "POST /v1/audio/speech", "POST /v1/responses", "POST /v1/conversations"):
        assert counts[f"{label} positive"] > 0 and counts[f"{label} negative"] > 0, counts
    # the real ids were reached: the stored routes answered more than 404s
    for label in ("GET /v1/conversations", "GET /v1/conversations/{conversation_id}/items", "GET /v1/responses/{response_id}/input_items"):
        assert statuses[label][200] > 0, (label, dict(statuses[label]))
    assert statuses["POST /v1/responses"][200] > 0, dict(statuses["POST /v1/responses"])
    # speech answered with audio (binary or SSE), not only refusals: its 200s were checked too
    print(f"  speech 200s by content type: {dict(speech_types)}")
    assert statuses["POST /v1/audio/speech"][200] > 0, dict(statuses["POST /v1/audio/speech"])


@pytest.mark.parametrize("response_format", ["mp3", "opus", "flac", "wav", "pcm"])
def test_speech_audio_matches_the_document(serve_url, api_schema, response_format):
    """Each format's binary 200 passes every check against the document."""
    case = api_schema["/v1/audio/speech"]["POST"].Case(
        body={"model": "tts-1", "voice": "alloy", "input": "Hello there.", "response_format": response_format}
    )
    response = case.call(base_url=serve_url, headers=dict(AUTH), timeout=120)
    assert response.status_code == 200, response.text[:300]
    _check_speech(("POST", "/v1/audio/speech"), case.body, response, collections.Counter())
    case.validate_response(response, checks=CHECKS, headers=dict(AUTH))


def test_speech_sse_matches_the_document(serve_url, api_schema):
    """A speech SSE 200 passes every check against the document: each event an `{event, data}`
    object, `event` one of speech.audio.delta, speech.audio.done, error."""
    case = api_schema["/v1/audio/speech"]["POST"].Case(
        body={"model": "tts-1", "voice": "alloy", "input": "Hello there.", "response_format": "pcm", "stream_format": "sse"}
    )
    response = case.call(base_url=serve_url, headers=dict(AUTH), timeout=120)
    assert response.status_code == 200, response.text[:300]
    _check_speech(("POST", "/v1/audio/speech"), case.body, response, collections.Counter())
    case.validate_response(response, checks=CHECKS, headers=dict(AUTH))
