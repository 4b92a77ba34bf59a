"""Grammar-based fuzzing of every route's requests, generated from the API's own models.

`ENDPOINTS` is the registry: one line per (method, route, body strategy, examples). The JSON
bodies come from `strategy_for(ChatCompletionRequest)` (tests/helpers/strategies.py), which walks
the model's JSON schema: a field or content-part type added to the model is fuzzed on the next run.
The transcription form comes from its OpenAPI component the same way. A new route adds one line
(`test_every_route_is_fuzzed` fails until it has one); a JSON route with a new request model is
`Endpoint("POST", "/v1/responses", json_bodies(ResponsesRequest, VALUES), 600)`.

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
from serve.http.ingress import CHAT, MODELS, TRANSCRIPTIONS
from serve.protocol import ChatCompletionRequest
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

from .conftest import AUTH

HEALTH = "/health"
SERVED_MODEL = "chorus"
MAX_TOKENS = 4
MIN_REQUESTS = 2_000
WORKERS = 6
TIMEOUT_S = 90
# Valid clips that may reach Whisper (each costs a pass); beyond these, the clip is cut short.
WHISPER_BUDGET = {CHAT: 10, TRANSCRIPTIONS: 16}


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


@dataclass(frozen=True)
class Endpoint:
    """A route to fuzz: its method and path, its body strategy (None: no body), how many requests."""

    method: str
    path: str
    bodies: st.SearchStrategy[Body] | None
    examples: int
    path_values: st.SearchStrategy[str] | None = None  # what fills the path's `{param}` (URL-encoded)

    def __repr__(self) -> str:  # Hypothesis shows strategies' arguments; the grammar's repr is huge
        return f"Endpoint({self.method} {self.path})"


MODEL_IDS = st.sampled_from([
    "chorus", "whisper-1", "whisper-base", "gpt-4o", "", "%ED%A0%80", "%00", "a" * 3_000, "..%2F..%2Fetc%2Fpasswd",
    "%3C%7Cim_start%7C%3E", "chorus/extra/segments", "%F0%9F%98%80", "chorus%20",
])

ENDPOINTS = [
    Endpoint("POST", CHAT, json_bodies(ChatCompletionRequest, CHAT_VALUES, _cheap_chat), 1_350),
    Endpoint("POST", TRANSCRIPTIONS, form_bodies(openapi.COMPONENTS["TranscriptionRequest"], FORM_VALUES, openapi.COMPONENTS), 420),
    Endpoint("GET", MODELS, None, 80),
    Endpoint("GET", MODELS + "/{model:path}", None, 80, path_values=MODEL_IDS),
    Endpoint("GET", "/metrics", None, 20),
    Endpoint("GET", HEALTH, None, 40),
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
    if endpoint.path_values is not None:
        value = draw(endpoint.path_values)
        endpoint = replace(endpoint, path=re.sub(r"\{[^}]+\}", lambda _: value, endpoint.path))
    if endpoint.bodies is None:  # a bodiless route: now and then a query string or junk body anyway
        content = draw(st.none() | st.binary(max_size=64)) if draw(st.integers(0, 5)) == 0 else None
        query = draw(st.sampled_from(QUERIES))
        recipe = (f"query {clip(query, 30)!r}",) * bool(query) + ("junk body",) * (content is not None)
        return Request(f"{endpoint.method} {endpoint.path}", endpoint.method, endpoint.path + query, headers, content, recipe)
    body = draw(endpoint.bodies)
    if body.content_type is not None:
        headers["Content-Type"] = body.content_type
    return Request(f"{endpoint.method} {endpoint.path}", endpoint.method, endpoint.path, headers, body.content, body.recipe)


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
    forms = {CHAT: (b64(TINY_WAV).encode(), b64(BROKEN_WAV).encode()), TRANSCRIPTIONS: (TINY_WAV, BROKEN_WAV)}
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
    elif status == 200 and content_type.startswith("text/event-stream"):
        outcome.problem = _stream_problem(data, outcome)
    return outcome


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
