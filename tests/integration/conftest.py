"""A real Ray Serve application over real HTTP on loopback, shared by the integration tests.

Models: the packaged real Whisper-base and SmolLM2 (prepared by `make test`'s setup), a tiny
random CLIP (no CLIP weights exist on these machines) and untrained projectors, explicitly allowed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from types import MappingProxyType

import pytest

from serve.ports import free_port

REPO = Path(__file__).resolve().parents[2]
TINY_CLIP = REPO / "tests" / "assets" / "tiny_clip.json"
API_KEY = "sk-chorus-integration-test"
API_KEY_B = "sk-chorus-integration-other"  # a second tenant: the stored APIs' isolation tests
# the console's browser tests: a tenant of their own, so the conversations and media they store never
# change what the stored APIs' tests count
API_KEY_CONSOLE = "sk-chorus-integration-console"
# Read-only: a library that merged its own defaults into the dict it was given (schemathesis' requests
# transport added `Connection: keep-alive`) turned every later WebSocket handshake sent with it into a
# plain GET (404); a shared header set must not change under the tests that follow.
AUTH = MappingProxyType({"Authorization": f"Bearer {API_KEY}"})
MAX_IN_FLIGHT = 24
BODY_IDLE_TIMEOUT_S = 3.0
STORE_DIR = tempfile.mkdtemp(prefix="chorus-store-")  # the session's SQLite store (never the user's)


def test_config() -> dict:
    small = {"num_cpus": 0.25, "max_ongoing_requests": 16}
    return {
        "served_model_name": "chorus",
        # the served default's engine (deploy/local.yaml); 24 decode slots: the disconnect test holds 20
        # streams in flight at once
        "llm": {"model": "packaged", "engine": "onnx", "quantization": "int4", "threads": 1, "max_batch": 24,
                "stream_interval": 2},
        "whisper": {"model": "packaged"},
        "vision": {"model_name": str(TINY_CLIP), "pretrained": None, "random_init": True},
        # the shipped audio projector; the tiny CLIP gets an untrained one, explicitly allowed
        # images read by OCR, as the served default (with CLIP configured, `image_mode` must say so)
        "fusion": {
            "audio_mode": "transcript",
            "audio_projector": "packaged",
            "allow_random_projectors": True,
            "image_mode": "ocr",
        },
        # the key is configured by its hash, as a shared config should
        "auth": {"api_keys": ["sha256:" + hashlib.sha256(key.encode()).hexdigest() for key in (API_KEY, API_KEY_B, API_KEY_CONSOLE)]},
        # remote images on, with loopback names allowlisted: the hostile cases prove the address
        # check after resolution refuses them anyway
        "remote_media": {"enabled": True, "allowed_hosts": ["localhost", "127.0.0.1", "example.com"], "timeout_s": 3},
        # the overload test bursts at 3x this many concurrent requests per ingress replica
        # short body deadlines, so the slow-client tests see a trickling body cut within seconds
        "limits": {"max_in_flight": MAX_IN_FLIGHT, "body_idle_timeout_s": BODY_IDLE_TIMEOUT_S, "body_timeout_s": 20},
        # a short lease: a response whose ingress dies is swept within seconds (test_faults)
        "store": {"data_dir": STORE_DIR, "lease_s": 3},
        "deployments": {
            "ingress": {"num_cpus": 0.25, "max_ongoing_requests": 4 * MAX_IN_FLIGHT},
            "audio_encoder": small,
            "vision_encoder": small,
            "llm_decoder": {"num_cpus": 1, "max_ongoing_requests": 32},
            "speech": small,
        },
    }


@pytest.fixture(scope="session")
def serve_app():
    import ray
    from ray import serve

    from modalities.audio import prepare_whisper
    from modalities.llm import prepare_llm
    from modalities.llm.onnx_export import prepare_onnx_llm
    from serve import haproxy
    from serve.app import build_app

    prepare_llm()
    prepare_onnx_llm()
    prepare_whisper()
    # Ray workers import `tests`/`serve` from the repo; the dashboard is not needed here.
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    metrics_port = free_port()
    # The ingress `chorus serve` uses by default (Ray's Python proxy; HAProxy with CHORUS_HAPROXY=1,
    # a cluster-wide setting only needed while the cluster starts, restored after).
    with haproxy.starting_cluster() as proxy_env:
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port
        )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(test_config()), name="chorus", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url)
    yield url, metrics_port, proxy_env
    serve.shutdown()
    ray.shutdown()
    haproxy.cleanup(proxy_env)


@pytest.fixture(scope="session")
def metrics_port(serve_app):
    return serve_app[1]


@pytest.fixture(scope="session")
def serve_url(serve_app):
    return serve_app[0]


@pytest.fixture(scope="session")
def proxy_env(serve_app):
    """The HAProxy settings the shared cluster was started with ({} if it runs Ray's Python proxy)."""
    return serve_app[2]


def _wait_healthy(url: str, timeout_s: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/health", timeout=10)
            if last.status_code == 200:
                return
        except httpx.HTTPError as err:
            last = err
        time.sleep(1.0)
    raise RuntimeError(f"service did not become healthy: {last!r}")


@pytest.fixture(scope="module")
def client(serve_url):
    """The official openai client against the live app, with the test key."""
    import openai

    return openai.OpenAI(base_url=f"{serve_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
