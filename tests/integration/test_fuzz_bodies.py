"""Grammar-based fuzzing of every route's requests, generated from the API's own models.

`ENDPOINTS` is the registry: one line per (method, route, body strategy, examples). The JSON
bodies come from `strategy_for(ChatCompletionRequest)` (tests/helpers/strategies.py), which walks
the model's JSON schema: a field or content-part type added to the model is fuzzed on the next run.
The Audio API's forms come from their OpenAPI components the same way. A new route adds one line
(`test_every_route_is_fuzzed` fails until it has one); a JSON route with a new request model is
`Endpoint("POST", "/v1/responses", json_bodies(ResponseCreateRequest, VALUES), 600)`.

The stored APIs (Responses, Conversations) are fuzzed the same way. Their ids are drawn from a pool
of hostile ones and of placeholders (`REAL`) that are swapped, just before sending, for the ids of
real objects: a conversation with items, a stored response (and, for the DELETE routes, objects
made to be deleted), another tenant's. Responses streams are read to their terminal event.

Bodies are drawn first, all of them, by Hypothesis with a fixed seed (`derandomize`, no database,
generation only: no shrinking), then sent by a few threads over one connection pool; outcomes are
kept by index, so a run is reproducible. Hostile values everywhere: lone surrogates, ChatML special
tokens and media markers in text, 5,000+-digit integers, odd floats and NaN/Infinity literals,
1,000+ levels of nesting, wrong types, extra fields, empty and oversized arrays, random and
truncated bodies, broken multipart framing, wrong methods and unknown routes.

The contract: never a 5xx (nor a dropped connection, nor a 200 stream that ends in a server error
or without `[DONE]`); every failure is collected with its request and response and reported at the
end, grouped by class. Cost is capped without making requests less hostile: completions that
would be served are held to `MAX_TOKENS`, and only a few valid clips reach Whisper.
"""

from __future__ import annotations

import collections
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from serve.http import openapi
from serve.http.ingress import CHAT, CONVERSATIONS, MODELS, RESPONSES, SPEECH, TRANSCRIPTIONS, TRANSLATIONS
from serve.protocol import ChatCompletionRequest
from serve.protocol.responses import (
    ConversationCreateRequest,
    ConversationItemsRequest,
    ConversationUpdateRequest,
    ResponseCreateRequest,
)
from serve.protocol.speech import SpeechRequest
from tests import pdfs
from tests.helpers.strategies import (
    BROKEN_WAV,
    TINY_WAV,
    Body,
    audio_data,
    audio_files,
    b64,
    clip,
    form_bodies,
    hostile_strings,
    image_urls,
    json_bodies,
    materialize,
    pool,
)

from .conftest import API_KEY_B, AUTH

HEALTH = "/health"
SERVED_MODEL = "chorus"
MAX_TOKENS = 4
MIN_REQUESTS = 2_000
WORKERS = 6
TIMEOUT_S = 90
# Valid clips that may reach Whisper (each costs a pass); beyond these, the clip is cut short.
WHISPER_BUDGET = {CHAT: 10, TRANSCRIPTIONS: 16, TRANSLATIONS: 6, RESPONSES: 6}


def _cheap_chat(tree: Any) -> Any:
    """A body the service would serve asks for at most MAX_TOKENS (via max_completion_tokens,
    which wins); anything it would refuse is left as it is."""
    if not isinstance(tree, dict):
        return tree
    try:
        request = ChatCompletionRequest.model_validate(materialize(tree))
    except Exception:
        return tree
    wanted = request.requested_max_tokens()
    if wanted is None or wanted > MAX_TOKENS:
        tree["max_completion_tokens"] = MAX_TOKENS
    return tree


# `file` parts (documents): the schema gives file_data any string; these reach the PDF reader.
_PDF = pdfs.text_pdf([["A fuzzed document page"]])
FILE_DATA = {
    "valid PDF": "data:application/pdf;base64," + b64(_PDF),
    "PDF as octet-stream": "data:application/octet-stream;base64," + b64(_PDF),
    "truncated PDF": "data:application/pdf;base64," + b64(_PDF[:80]),
    "corrupt PDF": "data:application/pdf;base64," + b64(pdfs.corrupt_pdf()),
    "encrypted PDF": "data:application/pdf;base64," + b64(pdfs.encrypted_pdf()),
    "21 pages": "data:application/pdf;base64," + b64(pdfs.many_pages_pdf(21)),
    "text/plain": "data:text/plain;base64,aGk=",
    "WAV as PDF": "data:application/pdf;base64," + b64(TINY_WAV[:64]),
    "not base64": "data:application/pdf;base64,!!notbase64!!",
    "not a data URL": b64(_PDF),
    "empty data URL": "data:application/pdf;base64,",
    "empty": "",
}
file_data = st.one_of(st.just(FILE_DATA["valid PDF"]), pool(FILE_DATA))

# What a schema cannot know: the served model's name, cheap lengths, media worth decoding.
CHAT_VALUES = {
    "model": st.just(SERVED_MODEL),
    "max_tokens": st.integers(1, MAX_TOKENS),
    "max_completion_tokens": st.integers(1, MAX_TOKENS),
    "stream": st.sampled_from([True, False, None]),
    "input_audio.data": audio_data,
    "image_url.url": image_urls,
    "file.file_data": file_data,
}
FORM_VALUES = {
    "model": st.sampled_from(["whisper-1", "whisper-base"]),
    "language": st.sampled_from(["en", "de"]),
    "file": st.one_of(st.just(TINY_WAV), audio_files),  # valid audio often (the budget below caps Whisper passes)
}


def _cheap_response(tree: Any) -> Any:
    """A Responses body the service would serve asks for at most MAX_TOKENS (`max_output_tokens`)."""
    if not isinstance(tree, dict):
        return tree
    try:
        request = ResponseCreateRequest.model_validate(materialize(tree))
    except Exception:
        return tree
    if request.max_output_tokens is None or request.max_output_tokens > MAX_TOKENS:
        tree["max_output_tokens"] = MAX_TOKENS
    return tree


MAX_SPEECH_CHARS = 160  # what a fuzzed speech request may have spoken (each character costs synthesis)
SPEECH_VALUES = {
    "model": st.sampled_from(["tts-1", "tts-1", "tts-1", "gpt-4o-mini-tts", "hibari", "chorus", "whisper-1"]),
    "voice": st.sampled_from(["alloy", "alloy", "nova", "espeak-de", "nobody", "ALLOY"]),
}


def _cheap_speech(tree: Any) -> Any:
    """A speech input the service would take (at most 4096 characters) is cut to MAX_SPEECH_CHARS."""
    if isinstance(tree, dict) and isinstance(tree.get("input"), str) and len(tree["input"]) <= 4096:
        tree["input"] = tree["input"][:MAX_SPEECH_CHARS]
    return tree


# Placeholders for real objects' ids (swapped in by `with_real_ids` just before sending); the
# DOOMED ones are deleted by the first DELETE that names them.
REAL = {
    "conversation": "conv_fuzzREALconversation",
    "item": "msg_fuzzREALitem",
    "doomed_conversation": "conv_fuzzREALdoomed",
    "doomed_item": "msg_fuzzREALdoomed",
    "responses_conversation": "conv_fuzzREALforresponses",
    "response": "resp_fuzzREALresponse",
    "input_item": "msg_fuzzREALinput",
    "doomed_response": "resp_fuzzREALdoomed",
    "other_conversation": "conv_fuzzREALother",  # another tenant's (API_KEY_B): always 404
    "other_response": "resp_fuzzREALother",
}
HOSTILE_IDS = [
    "", "%ED%A0%80", "%00", "x%00y", "a" * 3_000, "..%2F..%2Fetc%2Fpasswd", "%2E%2E", "%27%20OR%201%3D1%20--",
    "%3C%7Cim_start%7C%3E", "%F0%9F%98%80", "%E2%80%AE", "conv_" + "0" * 32, "resp_" + "0" * 32, "msg_" + "0" * 32, "%25",
]


def _ids(*real: str) -> st.SearchStrategy[str]:
    """Mostly the named real objects, else a hostile id."""
    return st.one_of(st.sampled_from([REAL[name] for name in real]), st.sampled_from(HOSTILE_IDS))


RESPONSE_IDS = _ids("response", "other_response")
CONVERSATION_IDS = _ids("conversation", "other_conversation")
ITEM_IDS = _ids("item", "input_item")
PAGE_QUERIES = [
    "", "", "?limit=1", "?limit=100&order=asc", "?order=desc&limit=2", "?limit=0", "?limit=101", "?limit=-1", "?limit=abc",
    "?limit=" + "9" * 5_000, "?order=sideways", "?order=", f"?after={REAL['item']}", f"?after={REAL['input_item']}&order=asc",
    "?after=msg_unknown", "?after=%00", "?after=%ED%A0%80", "?after=" + "a" * 3_000, "?limit=1&limit=abc", "?%ff=%00",
]

STORED_MEDIA = {"input_audio.data": audio_data, "image_url": image_urls, "file_data": file_data}
RESPONSE_VALUES = {
    "model": st.just(SERVED_MODEL),
    "max_output_tokens": st.integers(1, MAX_TOKENS),
    "stream": st.sampled_from([True, False, None]),
    "background": st.sampled_from([None, False, False, True]),  # true is refused: now and then
    "tool_choice": st.sampled_from([None, None, None, "none", "auto", "required"]),  # auto/required need tools
    "previous_response_id": st.one_of(st.none(), st.none(), st.sampled_from([REAL["response"], REAL["other_response"], "resp_unknown"])),
    "conversation": st.one_of(
        st.none(),
        st.none(),
        st.sampled_from([REAL["responses_conversation"], REAL["other_conversation"], "conv_unknown"]),
        st.fixed_dictionaries({"id": st.just(REAL["responses_conversation"])}),  # a fresh dict each time: trees are mutated in place
    ),
    **STORED_MEDIA,
}


@dataclass(frozen=True)
class Endpoint:
    """A route to fuzz: its method and path, its body strategy (None: no body), how many requests."""

    method: str
    path: str
    bodies: st.SearchStrategy[Body] | None
    examples: int
    # what fills the path's `{param}`s (URL-encoded): one strategy for all, or one per name
    path_values: st.SearchStrategy[str] | dict[str, st.SearchStrategy[str]] | None = None
    queries: tuple[str, ...] | None = None  # query strings for a bodiless route (default QUERIES)

    def __repr__(self) -> str:  # Hypothesis shows strategies' arguments; the grammar's repr is huge
        return f"Endpoint({self.method} {self.path})"


MODEL_IDS = st.sampled_from([
    "chorus", "whisper-1", "whisper-base", "gpt-4o", "", "%ED%A0%80", "%00", "a" * 3_000, "..%2F..%2Fetc%2Fpasswd",
    "%3C%7Cim_start%7C%3E", "chorus/extra/segments", "%F0%9F%98%80", "chorus%20",
])

CONSOLE_FILES = st.one_of(
    st.sampled_from(["index.html", "js/main.js", "console.css", "%2e%2e/%2e%2e/pyproject.toml", "js", "", "%00", "%ED%A0%80"]),
    st.sampled_from(HOSTILE_IDS),
)
ENDPOINTS = [
    Endpoint("POST", CHAT, json_bodies(ChatCompletionRequest, CHAT_VALUES, _cheap_chat), 1_350),
    Endpoint("POST", TRANSCRIPTIONS, form_bodies(openapi.COMPONENTS["TranscriptionRequest"], FORM_VALUES, openapi.COMPONENTS), 420),
    Endpoint("POST", TRANSLATIONS, form_bodies(openapi.COMPONENTS["TranslationRequest"], FORM_VALUES, openapi.COMPONENTS), 150),
    Endpoint("POST", SPEECH, json_bodies(SpeechRequest, SPEECH_VALUES, _cheap_speech), 300),
    Endpoint("GET", MODELS, None, 80),
    Endpoint("GET", MODELS + "/{model:path}", None, 80, path_values=MODEL_IDS),
    Endpoint("GET", "/metrics", None, 20),
    Endpoint("GET", HEALTH, None, 40),
    # the console's static files (public, no body): hostile names must stay 404s
    Endpoint("GET", "/", None, 10),
    Endpoint("HEAD", "/", None, 5),
    Endpoint("GET", "/console/{name:path}", None, 60, path_values=CONSOLE_FILES),
    Endpoint("HEAD", "/console/{name:path}", None, 10, path_values=CONSOLE_FILES),
    # the stored APIs
    Endpoint("POST", RESPONSES, json_bodies(ResponseCreateRequest, RESPONSE_VALUES, _cheap_response), 450),
    Endpoint("GET", RESPONSES + "/{response_id}", None, 40, path_values=RESPONSE_IDS),
    Endpoint("POST", RESPONSES + "/{response_id}/cancel", None, 40, path_values=RESPONSE_IDS),
    Endpoint("GET", RESPONSES + "/{response_id}/input_items", None, 80, path_values=RESPONSE_IDS, queries=tuple(PAGE_QUERIES)),
    Endpoint("POST", CONVERSATIONS, json_bodies(ConversationCreateRequest, STORED_MEDIA), 250),
    Endpoint("GET", CONVERSATIONS, None, 60,  # the caller's conversations (a Chorus extension)
             queries=(*PAGE_QUERIES, f"?after={REAL['conversation']}", f"?after={REAL['other_conversation']}&order=asc")),
    Endpoint("GET", CONVERSATIONS + "/{conversation_id}", None, 40, path_values=CONVERSATION_IDS),
    Endpoint("POST", CONVERSATIONS + "/{conversation_id}", json_bodies(ConversationUpdateRequest), 120, path_values=CONVERSATION_IDS),
    Endpoint("GET", CONVERSATIONS + "/{conversation_id}/items", None, 80, path_values=CONVERSATION_IDS, queries=tuple(PAGE_QUERIES)),
    Endpoint("POST", CONVERSATIONS + "/{conversation_id}/items", json_bodies(ConversationItemsRequest, STORED_MEDIA), 200,
             path_values=CONVERSATION_IDS),
    Endpoint("GET", CONVERSATIONS + "/{conversation_id}/items/{item_id}", None, 60,
             path_values={"conversation_id": CONVERSATION_IDS, "item_id": ITEM_IDS}),
    # the DELETE routes last, each on objects of its own (the first to name one deletes it)
    Endpoint("DELETE", CONVERSATIONS + "/{conversation_id}/items/{item_id}", None, 40,
             path_values={"conversation_id": _ids("doomed_conversation", "conversation", "other_conversation"),
                          "item_id": _ids("doomed_item", "item")}),
    Endpoint("DELETE", CONVERSATIONS + "/{conversation_id}", None, 40, path_values=_ids("doomed_conversation", "other_conversation")),
    Endpoint("DELETE", RESPONSES + "/{response_id}", None, 40, path_values=_ids("doomed_response", "other_response")),
]
STRAY_EXAMPLES = 160  # unknown routes, and the known ones under other methods

STRAY_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PROPFIND", "FOO"]
STRAY_PATHS = [
    "/", "/v1", "/v1/", "/v1/responses", "/v1/realtime", "/v1/completions", "/v1/embeddings", "/v1/audio/translations",
    "/v1/audio/speech", "/v1/chat/completions/", "/V1/CHAT/COMPLETIONS", "//v1/models", "/v1/models/chorus",
    "/v1/models/%ED%A0%80", "/health/", "/metrics", "/docs", "/redoc", "/openapi.json", "/-/routes", "/-/healthz",
    "/%00", "/v1/chat/completions%00", "/..%2f..%2fetc%2fpasswd", "/" + "a" * 4_000, "/%ff%fe",
    "/v1/chat/completions?stream=true&model=%ED%A0%80", "/v1/%3C%7Cim_start%7C%3E", CHAT, TRANSCRIPTIONS, MODELS, HEALTH,
]
QUERIES = ["", "", "", "?x=1", "?model=%ED%A0%80", "?" + "a=b&" * 500, "?%ff=%00"]


@dataclass
class Request:
    label: str
    method: str
    path: str
    headers: dict[str, Any]
    content: bytes | None
    recipe: tuple[str, ...]


@dataclass
class Outcome:
    status: int | None
    content_type: str
    head: bytes
    seconds: float
    problem: str | None = None
    events: list[str] = field(default_factory=list)


auth_headers = st.integers(0, 15).flatmap(
    lambda roll: st.just(dict(AUTH)) if roll else st.sampled_from([
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic c2stY2hvcnVz"},
        {"Authorization": AUTH["Authorization"].replace(" ", "  ")},
        {"Authorization": b"Bearer \xff\xfe\xed\xa0\x80"},
    ])
)


@st.composite
def _requests(draw: st.DrawFn, endpoint: Endpoint) -> Request:
    headers = dict(draw(auth_headers))
    label = f"{endpoint.method} {endpoint.path}"
    if isinstance(endpoint.path_values, dict):
        values = {name: draw(strategy) for name, strategy in endpoint.path_values.items()}
        endpoint = replace(endpoint, path=re.sub(r"\{([^}:]+)[^}]*\}", lambda m: values[m.group(1)], endpoint.path))
    elif endpoint.path_values is not None:
        value = draw(endpoint.path_values)
        endpoint = replace(endpoint, path=re.sub(r"\{[^}]+\}", lambda _: value, endpoint.path))
    if endpoint.bodies is None:  # a bodiless route: now and then a query string or junk body anyway
        content = draw(st.none() | st.binary(max_size=64)) if draw(st.integers(0, 5)) == 0 else None
        query = draw(st.sampled_from(endpoint.queries or QUERIES))
        recipe = (f"query {clip(query, 30)!r}",) * bool(query) + ("junk body",) * (content is not None)
        return Request(_label(label, endpoint.path), endpoint.method, endpoint.path + query, headers, content, recipe)
    body = draw(endpoint.bodies)
    if body.content_type is not None:
        headers["Content-Type"] = body.content_type
    return Request(_label(label, endpoint.path), endpoint.method, endpoint.path, headers, body.content, body.recipe)


def _label(template: str, path: str) -> str:
    """The route's label: its template, except the model route, labelled by the path it got (as before)."""
    return f"{template.split()[0]} {path}" if "{model" in template else template


@st.composite
def _strays(draw: st.DrawFn) -> Request:
    method, path = draw(st.sampled_from(STRAY_METHODS)), draw(st.sampled_from(STRAY_PATHS))
    content = draw(st.none() | st.binary(max_size=64) | hostile_strings.map(lambda s: s.encode("utf-8", "surrogatepass")))
    return Request("stray", method, path, dict(draw(auth_headers)), content, (f"{method} {clip(path, 60)}",))


def _draw(strategy: st.SearchStrategy[Request], count: int) -> list[Request]:
    """`count` distinct examples of `strategy`, the same every run (fixed seed; generation only:
    Hypothesis's engine likes to repeat an example it has seen, so repeats are rejected)."""
    drawn: dict[tuple[Any, ...], Request] = {}

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(request: Request) -> None:
        key = (request.method, request.path, request.content, repr(request.headers))
        assume(key not in drawn)
        drawn[key] = request

    collect()
    return list(drawn.values())


def _within_whisper_budget(requests: list[Request]) -> None:
    """Past each route's budget, a valid clip is swapped for a truncated one (refused at once)."""
    in_json = (b64(TINY_WAV).encode(), b64(BROKEN_WAV).encode())
    forms = {CHAT: in_json, RESPONSES: in_json, TRANSCRIPTIONS: (TINY_WAV, BROKEN_WAV), TRANSLATIONS: (TINY_WAV, BROKEN_WAV)}
    used: collections.Counter[str] = collections.Counter()
    for request in requests:
        path = request.path
        if path not in forms or request.content is None or forms[path][0] not in request.content:
            continue
        used[path] += 1
        if used[path] > WHISPER_BUDGET[path]:
            request.content = request.content.replace(*forms[path])


def generate() -> list[Request]:
    requests: list[Request] = []
    for endpoint in ENDPOINTS:
        requests += _draw(_requests(endpoint), endpoint.examples)
    requests += _draw(_strays(), STRAY_EXAMPLES)
    _within_whisper_budget(requests)
    return requests


def make_real_objects(base: str) -> dict[str, str]:
    """The objects REAL's placeholders stand for, made over HTTP: placeholder → real id."""
    other = {"Authorization": f"Bearer {API_KEY_B}"}
    items = [{"role": "user", "content": "Where is my parcel?"}, {"role": "assistant", "content": "On its way."}]

    def post(path: str, body: dict, headers: dict = AUTH) -> dict:
        resp = httpx.post(base + path, json=body, headers=headers, timeout=120)
        assert resp.status_code == 200, resp.text[:300]
        return resp.json()

    def first_item(path: str, headers: dict = AUTH) -> str:
        resp = httpx.get(base + path + "?order=asc", headers=headers, timeout=60)
        assert resp.status_code == 200, resp.text[:300]
        return resp.json()["data"][0]["id"]

    response = {"model": SERVED_MODEL, "input": "hi", "max_output_tokens": 2}
    real = {name: "" for name in REAL}
    real["conversation"] = post(CONVERSATIONS, {"items": items, "metadata": {"case": "fuzz"}})["id"]
    real["item"] = first_item(f"{CONVERSATIONS}/{real['conversation']}/items")
    real["doomed_conversation"] = post(CONVERSATIONS, {"items": items})["id"]
    real["doomed_item"] = first_item(f"{CONVERSATIONS}/{real['doomed_conversation']}/items")
    real["responses_conversation"] = post(CONVERSATIONS, {"items": items[:1]})["id"]
    real["response"] = post(RESPONSES, response)["id"]
    real["input_item"] = first_item(f"{RESPONSES}/{real['response']}/input_items")
    real["doomed_response"] = post(RESPONSES, response)["id"]
    real["other_conversation"] = post(CONVERSATIONS, {"items": items}, other)["id"]
    real["other_response"] = post(RESPONSES, response, other)["id"]
    return {REAL[name]: value for name, value in real.items()}


def with_real_ids(requests: list[Request], real: dict[str, str]) -> None:
    """The placeholders in paths and bodies (where they survived mutation) become real ids."""
    for request in requests:
        for placeholder, value in real.items():
            if placeholder in request.path:
                request.path = request.path.replace(placeholder, value)
            if request.content is not None and placeholder.encode() in request.content:
                request.content = request.content.replace(placeholder.encode(), value.encode())


# --- sending ----------------------------------------------------------------------------------


def _send(client: httpx.Client, base: str, request: Request) -> Outcome:
    started = time.monotonic()
    try:
        with client.stream(request.method, base + request.path, content=request.content, headers=request.headers) as resp:
            data = b"".join(resp.iter_bytes())
            status, content_type = resp.status_code, resp.headers.get("content-type", "")
    except httpx.HTTPError as err:
        return Outcome(None, "", b"", time.monotonic() - started, f"no response: {type(err).__name__}: {clip(str(err), 200)}")
    outcome = Outcome(status, content_type, data[:600], time.monotonic() - started)
    if status >= 500:
        outcome.problem = f"HTTP {status}"
    elif request.path.split("?")[0] == SPEECH and status == 200:
        outcome.problem = _speech_problem(data, outcome)
    elif status == 200 and content_type.startswith("text/event-stream"):
        responses = request.path.split("?")[0] == RESPONSES
        outcome.problem = (_responses_stream_problem if responses else _stream_problem)(data, outcome)
    return outcome


def _speech_problem(data: bytes, outcome: Outcome) -> str | None:
    """A speech 200 (read to its end, or the connection dropped: 'no response' above) is audio, or
    SSE events (`speech.audio.delta`s) ending in `speech.audio.done`, with no error among them."""
    if not outcome.content_type.startswith("text/event-stream"):
        return None if outcome.content_type.startswith("audio/") else f"a speech 200 of type {outcome.content_type!r}"
    events = [line[5:].strip() for line in data.decode("utf-8", "replace").splitlines() if line.startswith("data:")]
    outcome.events = events
    try:
        types = [json.loads(event).get("type") for event in events]
    except ValueError:
        return "200 speech stream with an event that is not JSON"
    if "error" in types or not types or types[-1] != "speech.audio.done":
        return f"200 speech stream did not end with speech.audio.done: {types[-3:]}"
    return None


def _stream_problem(data: bytes, outcome: Outcome) -> str | None:
    events = [line[5:].strip() for line in data.decode("utf-8", "replace").splitlines() if line.startswith("data:")]
    outcome.events = events
    for event in events:
        if event != "[DONE]" and '"error"' in event:
            error = json.loads(event).get("error", {})
            if error.get("type") == "server_error":
                return f"200 stream ended with a server_error event: {error.get('message')}"
    if not events or events[-1] != "[DONE]":
        return "200 stream did not end with [DONE]"
    return None


RESPONSES_TERMINAL = ("response.completed", "response.incomplete", "response.failed", "response.cancelled")


def _responses_stream_problem(data: bytes, outcome: Outcome) -> str | None:
    """A Responses stream (`event:` + `data:` pairs, no [DONE]) ends with one terminal event, never
    a failure of ours (an `error` event, or `response.failed` with a server_error)."""
    events = [line[5:].strip() for line in data.decode("utf-8", "replace").splitlines() if line.startswith("data:")]
    outcome.events = events
    parsed = []
    for event in events:
        try:
            parsed.append(json.loads(event))
        except ValueError:
            return f"200 Responses stream with an event that is not JSON: {clip(event, 100)}"
    for event in parsed:
        if event.get("type") == "error":
            return f"200 Responses stream with an error event: {clip(json.dumps(event), 200)}"
        error = (event.get("response") or {}).get("error") or {}
        if error.get("code") == "server_error":
            return f"200 Responses stream ended with a server_error: {error.get('message')}"
    if not parsed or parsed[-1].get("type") not in RESPONSES_TERMINAL:
        return "200 Responses stream did not end with a terminal event"
    return None


def send_all(base: str, requests: list[Request]) -> list[Outcome]:
    limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
    with httpx.Client(timeout=TIMEOUT_S, limits=limits) as client, ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda r: _send(client, base, r), requests))


# --- reporting --------------------------------------------------------------------------------


# What in a body may explain a failure (a report aid: a class is the route, the problem and what
# the service said; within it, requests are grouped by the first of these they contain).
INGREDIENTS = [
    ("nesting >= 1,000 deep", re.compile(rb'(?:\[|\{"a":){1000}')),
    ("an integer literal of > 4,300 digits", re.compile(rb"[0-9]{4301}")),
    (
        "a lone surrogate (\\u escape)",
        re.compile(
            rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
            rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
        ),
    ),
    ("a lone surrogate (raw bytes, CESU-8)", re.compile(rb"\xed[\xa0-\xbf]")),
    ("a NaN/Infinity literal", re.compile(rb"(?<![A-Za-z])(?:NaN|Infinity)")),
    ("a ChatML special token", re.compile(rb"<\|(?:im_start|im_end|endoftext)\|>")),
    ("a media marker", re.compile(rb"chorus-media|</?(?:image|audio)>")),
]


def ingredients(request: Request) -> list[str]:
    content = request.content or b""
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 body: look at it as UTF-8
        try:
            content = content.decode("utf-16", "surrogatepass").encode("utf-8", "surrogatepass")
        except UnicodeError:
            pass
    return [name for name, pattern in INGREDIENTS if pattern.search(content)]


def _failure_class(request: Request, outcome: Outcome) -> str:
    said = outcome.head.decode("utf-8", "replace")
    try:
        said = json.loads(said)["error"]["message"]
    except Exception:
        pass
    said = re.sub(r"\d+", "N", said)[:100]
    return f"{request.label}: {outcome.problem}, saying {said!r}"


def _describe(request: Request, outcome: Outcome) -> str:
    content = request.content or b""
    return (
        f"      e.g. {request.method} {clip(request.path, 80)}, {len(content)} bytes ({'; '.join(request.recipe) or 'unmutated'})\n"
        f"        headers: {clip(repr(request.headers), 200)}\n"
        f"        body: {clip(repr(content), 400)}\n"
        f"        response: {outcome.status} {clip(repr(outcome.head), 300)}"
    )


def failure_report(requests: list[Request], outcomes: list[Outcome]) -> str:
    """The failures by class (route, problem, what the service said), then by the ingredient that
    likely set them off, each with its plainest example."""
    classes: dict[str, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for i, outcome in enumerate(outcomes):
        if outcome.problem is not None:
            found = ingredients(requests[i])
            classes[_failure_class(requests[i], outcome)][found[0] if found else "none of the known ingredients"].append(i)
    total = sum(len(ids) for by in classes.values() for ids in by.values())
    lines = [f"{total} of {len(requests)} fuzzed requests failed, in {len(classes)} classes:"]
    for name, by_ingredient in sorted(classes.items(), key=lambda item: -sum(map(len, item[1].values()))):
        lines.append(f"  [{sum(map(len, by_ingredient.values()))}x] {name}")
        for what, indices in sorted(by_ingredient.items(), key=lambda item: -len(item[1])):
            # the plainest example: fewest ingredients, then fewest bytes
            plainest = min(indices, key=lambda i: (len(ingredients(requests[i])), len(requests[i].content or b"")))
            lines.append(f"    [{len(indices)}x] with {what}")
            lines.append(_describe(requests[plainest], outcomes[plainest]))
    return "\n".join(lines)


def _summary(requests: list[Request], outcomes: list[Outcome], generated_s: float, sent_s: float) -> str:
    statuses: dict[str, collections.Counter[Any]] = collections.defaultdict(collections.Counter)
    seconds: collections.Counter[str] = collections.Counter()
    for request, outcome in zip(requests, outcomes):
        statuses[request.label][outcome.status] += 1
        seconds[request.label] += outcome.seconds
    streams = sum(o.content_type.startswith("text/event-stream") for o in outcomes)
    lines = [
        f"\nfuzz: {len(requests)} requests generated in {generated_s:.1f} s, sent in {sent_s:.1f} s ({WORKERS} workers);"
        f" {streams} event streams read to their end"
    ]
    for label, histogram in statuses.items():
        shown = dict(sorted(histogram.items(), key=lambda kv: str(kv[0])))
        lines.append(f"  {label}: {sum(histogram.values())} requests, {seconds[label]:.0f} s in flight, statuses {shown}")
    return "\n".join(lines)


def _still_answers(base: str) -> list[str]:
    problems = []
    health = httpx.get(f"{base}{HEALTH}", timeout=30)
    if health.status_code != 200:
        problems.append(f"GET /health answered {health.status_code}: {health.text[:300]}")
    body = {"model": SERVED_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    chat = httpx.post(f"{base}{CHAT}", json=body, headers=AUTH, timeout=60)
    if chat.status_code != 200:
        problems.append(f"a normal chat request answered {chat.status_code}: {chat.text[:300]}")
    return problems


# --- tests ------------------------------------------------------------------------------------


def test_every_route_is_fuzzed():
    """A route the app serves with no line in ENDPOINTS fails here: add one."""
    from fastapi.routing import APIRoute

    from serve.http.ingress import app

    served = {(method, route.path) for route in app.routes if isinstance(route, APIRoute) for method in route.methods}
    fuzzed = {(e.method, e.path) for e in ENDPOINTS}
    assert served <= fuzzed, f"routes without a fuzzing line in ENDPOINTS: {sorted(served - fuzzed)}"


def test_fuzzed_bodies_never_get_a_5xx(serve_url):
    started = time.monotonic()
    requests = generate()
    generated_s = time.monotonic() - started
    assert len(requests) >= MIN_REQUESTS, f"only {len(requests)} requests generated"
    with_real_ids(requests, make_real_objects(serve_url))

    started = time.monotonic()
    outcomes = send_all(serve_url, requests)
    sent_s = time.monotonic() - started
    print(_summary(requests, outcomes, generated_s, sent_s))
    assert len(outcomes) == len(requests)

    failed = any(o.problem is not None for o in outcomes)
    report = failure_report(requests, outcomes) if failed else ""
    if failed:
        print(report)
    down = _still_answers(serve_url)
    assert not failed and not down, "\n".join([report, *(f"after the run: {d}" for d in down)])
