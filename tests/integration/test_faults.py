"""A crashed encoder replica is replaced; requests never hang while it is gone."""

from __future__ import annotations

import base64
import time

import httpx
import ray

from modalities.speech import synthesize, to_wav_bytes

from .conftest import AUTH


def _replica_actors(deployment: str) -> list[tuple[str, str]]:
    return [
        (a["name"], a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"]
    ]


def test_killed_audio_encoder_is_replaced(serve_url):
    wav = to_wav_bytes(synthesize("Please check my order status."))
    body = {
        "model": "chorus",
        "max_tokens": 2,
        "chorus": {"fusion": "transcript"},
        "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}]}
        ],
    }
    before = _replica_actors("AudioEncoder")
    assert len(before) == 1
    ray.kill(ray.get_actor(before[0][0], namespace=before[0][1]), no_restart=True)

    # While it is gone, requests get an answer (an error or, once replaced, a result) — never a hang.
    statuses = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        start = time.monotonic()
        resp = httpx.post(f"{serve_url}/v1/chat/completions", json=body, headers=AUTH, timeout=90)
        assert time.monotonic() - start < 90
        statuses.append(resp.status_code)
        if resp.status_code == 200:
            break
        assert resp.status_code in (500, 503) and resp.json()["error"]["message"]
        time.sleep(1)
    assert statuses[-1] == 200, statuses
    after = _replica_actors("AudioEncoder")
    assert len(after) == 1 and after[0][0] != before[0][0]  # a new replica, not the killed one
    assert httpx.get(f"{serve_url}/health", timeout=30).status_code == 200


def test_decoder_killed_mid_response_leaves_it_stored_failed_with_its_text(serve_url):
    """A stored streaming response whose decoder replica dies: the stream ends with response.failed,
    the store holds it `failed` with the text generated before, and the decoder comes back."""
    import json

    # A regex holds the answer open for 2,000 characters, so the kill lands mid-answer.
    body = {"model": "chorus", "input": "Write.", "stream": True, "max_output_tokens": 1500, "chorus": {"regex": "[a-z ]{2000}"}}
    events = []
    with httpx.stream("POST", f"{serve_url}/v1/responses", json=body, headers=AUTH, timeout=120) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["type"] == "response.output_text.delta" and len(events) > 6:
                    break
        (name, namespace), = _replica_actors("LLMDecoder")
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    response_id = events[0]["response"]["id"]
    assert events[-1]["type"] == "response.failed", [e["type"] for e in events[-3:]]
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    stored = httpx.get(f"{serve_url}/v1/responses/{response_id}", headers=AUTH, timeout=30).json()
    assert stored["status"] == "failed" and stored["error"]["message"]
    assert stored["output"][0]["content"][0]["text"] == streamed and len(streamed) > 0

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # the decoder is replaced; chat answers again
        probe = httpx.post(f"{serve_url}/v1/chat/completions", headers=AUTH, timeout=90,
                           json={"model": "chorus", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        if probe.status_code == 200:
            break
        assert probe.status_code in (500, 503), probe.text[:300]
        time.sleep(1)
    assert probe.status_code == 200


def test_ingress_killed_mid_response_leaves_it_stored_incomplete(serve_url):
    """The replica writing a stored response dies: nobody can finish it, so its lease runs out and
    the store's sweep (run by every ingress replica) marks it `incomplete` with the text its last
    heartbeat wrote — never left `in_progress`, never lost."""
    import json

    body = {"model": "chorus", "input": "Write.", "stream": True, "max_output_tokens": 1500, "chorus": {"regex": "[a-z ]{2000}"}}
    response_id, started = None, None
    try:
        with httpx.stream("POST", f"{serve_url}/v1/responses", json=body, headers=AUTH, timeout=120) as reply:
            assert reply.status_code == 200
            lines = reply.iter_lines()
            for line in lines:
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                response_id = response_id or event["response"]["id"]
                if event["type"] == "response.output_text.delta":
                    started = started or time.monotonic()
                    if time.monotonic() - started > 2.5:  # past two heartbeats
                        break
            (name, namespace), = _replica_actors("Ingress")
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
            for _line in lines:
                pass
    except httpx.HTTPError:
        pass  # the connection went with the replica
    assert response_id is not None
    stored, deadline = None, time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            got = httpx.get(f"{serve_url}/v1/responses/{response_id}", headers=AUTH, timeout=30)
        except httpx.HTTPError:
            got = None
        if got is not None and got.status_code == 200 and got.json()["status"] != "in_progress":
            stored = got.json()
            break
        time.sleep(1)
    assert stored is not None, "the response stayed in_progress"
    assert stored["status"] == "incomplete" and stored["incomplete_details"] == {"reason": "interrupted"}
    assert len(stored["output"][0]["content"][0]["text"]) > 0  # what the heartbeats wrote
