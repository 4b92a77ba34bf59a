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
