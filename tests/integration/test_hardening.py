"""Hardening II against the live service: clients that leave never leak a slot, slow clients never
hold one, and every answer is in OpenAI's shape with a request id."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from .conftest import API_KEY, AUTH, BODY_IDLE_TIMEOUT_S

CHAT = "/v1/chat/completions"
ABANDONS_PER_PATH = 100
SETTLE_TIMEOUT_S = 120.0
SLOW_CLIENTS = 50


def chat(content: str = "Say hi.", **extra) -> dict:
    return {"model": "chorus", "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


def in_flight(serve_url: str) -> int:
    return sum(httpx.get(f"{serve_url}/health", timeout=30).json()["ingress"]["in_flight"].values())


def wait_until_idle(serve_url: str) -> None:
    """Until the ingress holds no request (cancelled work winds down in the background)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (held := in_flight(serve_url)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert held == 0, f"{held} requests still counted in flight after {SETTLE_TIMEOUT_S:.0f} s"


def _abandon_non_streaming(url: str) -> None:
    try:
        httpx.post(f"{url}{CHAT}", json=chat("Tell me a long story.", max_tokens=300), headers=AUTH, timeout=0.3)
    except httpx.TimeoutException:
        pass


def _abandon_stream_before_first_token(url: str) -> None:
    body = chat("word " * 400 + "Summarise.", max_tokens=50, stream=True)
    try:
        with httpx.stream("POST", f"{url}{CHAT}", json=body, headers=AUTH, timeout=0.05):
            pass
    except httpx.TimeoutException:
        pass


def _unencodable_model(url: str) -> int:
    raw = b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'
    response = httpx.post(f"{url}{CHAT}", content=raw, headers={**AUTH, "content-type": "application/json"}, timeout=30)
    return response.status_code


@pytest.mark.parametrize(
    "path", [_abandon_non_streaming, _abandon_stream_before_first_token, _unencodable_model], ids=lambda f: f.__name__
)
def test_every_abandon_path_gives_its_slot_back(serve_url: str, path) -> None:
    """Each path ≥ 100 times (more than the replica's 24 slots): afterwards nothing is counted in
    flight and a normal request answers 200. Before, each of these cost a slot for good."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: path(serve_url), range(ABANDONS_PER_PATH)))
    if path is _unencodable_model:
        assert results == [400] * ABANDONS_PER_PATH
    wait_until_idle(serve_url)
    ok = httpx.post(f"{serve_url}{CHAT}", json=chat(max_tokens=5), headers=AUTH, timeout=120)
    assert ok.status_code == 200, ok.text


def _slow_socket(url: str, headers_only: bool) -> socket.socket:
    """A client that sends its headers (and one body byte of 100,000 promised) and then nothing."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {parts.hostname}\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n"
    )
    sock.sendall(head.encode() if headers_only else (head + "\r\n{").encode())
    return sock


def _read_response(sock: socket.socket) -> str:
    """One HTTP response, headers and its Content-Length body, as text."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(4096)
        if not piece:
            return data.decode("latin-1")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        piece = sock.recv(4096)
        if not piece:
            break
        body += piece
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_slow_clients_hold_no_slots(serve_url: str) -> None:
    """50 clients trickling a body (and 10 stuck in their headers) while a normal request answers;
    a trickling body is cut with a 408 once it stalls."""
    baseline_started = time.perf_counter()
    assert httpx.post(f"{serve_url}{CHAT}", json=chat(max_tokens=5), headers=AUTH, timeout=120).status_code == 200
    baseline_s = time.perf_counter() - baseline_started
    slow = [_slow_socket(serve_url, headers_only=False) for _ in range(SLOW_CLIENTS)]
    slow += [_slow_socket(serve_url, headers_only=True) for _ in range(10)]
    try:
        started = time.perf_counter()
        ok = httpx.post(f"{serve_url}{CHAT}", json=chat(max_tokens=5), headers=AUTH, timeout=120)
        loaded_s = time.perf_counter() - started
        assert ok.status_code == 200, ok.text
        print(f"normal request with {len(slow)} slow clients open: {loaded_s:.3f} s vs {baseline_s:.3f} s alone "
              f"({loaded_s / baseline_s:.2f}x)")
        slow[0].settimeout(BODY_IDLE_TIMEOUT_S + 30)
        answer = _read_response(slow[0])
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert '"code":"request_timeout"' in answer
    finally:
        for sock in slow:
            sock.close()
    wait_until_idle(serve_url)


def test_unknown_routes_and_methods_answer_in_openai_shape(serve_url: str) -> None:
    missing = httpx.get(f"{serve_url}/v1/nope", headers=AUTH, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    assert "GET /v1/nope" in missing.json()["error"]["message"]
    wrong = httpx.get(f"{serve_url}{CHAT}", headers=AUTH, timeout=30)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    client = openai.OpenAI(base_url=f"{serve_url}/v1", api_key=API_KEY, max_retries=0)
    assert client.models.retrieve("chorus").id == "chorus"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert "gpt-4o" in str(info.value)


def test_every_response_carries_a_request_id(serve_url: str) -> None:
    responses = [
        httpx.get(f"{serve_url}/v1/models", headers=AUTH, timeout=30),
        httpx.get(f"{serve_url}/v1/models", timeout=30),  # 401
        httpx.get(f"{serve_url}/v1/nope", headers=AUTH, timeout=30),  # 404
        httpx.post(f"{serve_url}{CHAT}", content=b"{", headers=AUTH, timeout=30),  # 400
    ]
    assert [r.status_code for r in responses] == [200, 401, 404, 400]
    assert all(r.headers.get("x-request-id") for r in responses)


def test_metrics_are_served_behind_the_api_keys(serve_url: str) -> None:
    assert httpx.get(f"{serve_url}/metrics", timeout=30).status_code == 401
    metrics = httpx.get(f"{serve_url}/metrics", headers=AUTH, timeout=30)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert any(line.startswith("ray_") for line in metrics.text.splitlines())
