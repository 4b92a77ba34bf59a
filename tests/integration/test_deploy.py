"""`ray start --head` + `serve deploy deploy/local.yaml` (a copy on free ports), a request answered,
then one deployment scaled 1 → 2 replicas by editing the config and deploying again, then the
decoder replaced by a redeploy while a stream is in flight: the old replica drains it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serve import haproxy
from serve.ports import free_port

from .conftest import REPO
from .test_haproxy import assert_haproxy_fronts

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 300


def _run(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def _wait(predicate, what: str, timeout_s: float = STARTUP_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as err:  # not up yet
            last = err
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def _distinct_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"({path}: {err})"


@pytest.fixture
def ray_head():
    """A head node of our own, stopped (with everything it started) when the test ends.

    The shared cluster of the other integration tests runs on this host at the same time, so every
    port Ray would otherwise take at a fixed default (the dashboard agent's 52365, the client
    server's 10001, ...) is a free one of our own, and the head keeps its own temp dir: its logs
    are shown when it does not come up."""
    gcs, dashboard, agent_http, agent_grpc, client, metrics, runtime_env = _distinct_ports(7)
    token = secrets.token_hex(32)
    temp_dir = Path(tempfile.mkdtemp(prefix="chorus-ray-"))  # short: Ray's socket paths must fit 107 bytes
    proxy_env = haproxy.cluster_env(enabled=True)  # HAProxy in front (README "Deploying", opt-in)
    # Ray ≥ 2.5x protects the dashboard (which `serve deploy` talks to) with a token; use our own.
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        **proxy_env,
    }
    env.pop("RAY_ADDRESS", None)
    head_log = temp_dir / "ray-start.log"
    with head_log.open("wb") as out:
        head = subprocess.Popen(
            [
                str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
                f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
                f"--runtime-env-agent-port={runtime_env}", f"--temp-dir={temp_dir}",
                "--num-cpus=4", "--disable-usage-stats",
            ],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    address = f"http://127.0.0.1:{dashboard}"
    auth = {"Authorization": f"Bearer {token}"}

    def dashboard_up() -> bool:
        if head.poll() is not None:
            raise pytest.fail.Exception(f"`ray start --head` exited with {head.returncode}:\n{_tail(head_log)}")
        return httpx.get(f"{address}/api/version", headers=auth, timeout=5).status_code == 200

    try:
        try:
            _wait(dashboard_up, "the dashboard", 180)
        except AssertionError as err:
            logs = temp_dir / "session_latest" / "logs"
            raise AssertionError(
                f"{err}\n--- ray start:\n{_tail(head_log)}\n--- dashboard.log:\n{_tail(logs / 'dashboard.log')}"
                f"\n--- dashboard.err:\n{_tail(logs / 'dashboard.err')}"
            ) from None
        yield address, env, proxy_env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: ray start stops the cluster's processes on exit
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        haproxy.cleanup(proxy_env)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _replicas(address: str, env: dict[str, str], deployment: str) -> int:
    status = yaml.safe_load(_run(str(BIN / "serve"), "status", "-a", address, env=env))
    states = status["applications"]["chorus"]["deployments"][deployment]["replica_states"]
    return states.get("RUNNING", 0)


def test_serve_deploy_then_scale(ray_head, tmp_path):
    address, env, proxy_env = ray_head
    config = yaml.safe_load((REPO / "deploy" / "local.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    path = tmp_path / "chorus.yaml"
    path.write_text(yaml.safe_dump(config))

    _run(str(BIN / "serve"), "deploy", str(path), "-a", address, env=env)
    base = f"http://127.0.0.1:{port}"
    _wait(lambda: httpx.get(f"{base}/health", timeout=10).status_code == 200, "the deployed app")
    reply = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "chorus", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
        timeout=120,
    )
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    assert_haproxy_fronts(proxy_env, port)
    assert _replicas(address, env, "AudioEncoder") == 1

    for entry in config["applications"][0]["deployments"]:
        if entry["name"] == "AudioEncoder":
            entry["num_replicas"] = 2
    path.write_text(yaml.safe_dump(config))
    _run(str(BIN / "serve"), "deploy", str(path), "-a", address, env=env)
    assert _wait(lambda: _replicas(address, env, "AudioEncoder") == 2, "2 AudioEncoder replicas")
    assert _replicas(address, env, "LLMDecoder") == 1  # the others are untouched
    assert httpx.get(f"{base}/health", timeout=30).status_code == 200

    # Graceful shutdown: a changed application argument replaces every replica (ingress included)
    # while a stream runs on the old ones; they finish it before they go (the ingress and decoder
    # drain for request_timeout_s + 10 s by default; Serve's own 20 s default cut this stream).
    decoder_before = _replica_ids(address, env, "LLMDecoder")
    events: list[str] = []
    started = threading.Event()

    failures: list[BaseException] = []

    def stream() -> None:
        try:
            read()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failures.append(err)
            started.set()

    def read() -> None:
        body = {
            "model": "chorus",
            "messages": [{"role": "user", "content": "Count from 1 to 300, separated by commas."}],
            "max_tokens": 400,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=180) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(120), "the stream did not start"
    config["applications"][0]["args"]["deployments"]["llm_decoder"]["num_cpus"] = 0.9
    path.write_text(yaml.safe_dump(config))
    _run(str(BIN / "serve"), "deploy", str(path), "-a", address, env=env)
    deployed = time.monotonic()
    reader.join(240)
    assert not reader.is_alive() and not failures, failures
    still = set(decoder_before) & set(_replica_ids(address, env, "LLMDecoder"))
    print(f"\nredeploy during a stream of {len(events)} events: stream ended {time.monotonic() - deployed:.1f} s after the deploy; "
          f"old decoder replica {'still alive (the stream ended before it was stopped)' if still else 'gone: it drained the stream, then stopped'}")
    assert events[-1] == "[DONE]" and not any('"error"' in e for e in events), events[-3:]
    finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1] if json.loads(e)["choices"]]
    assert finishes[-1] in ("stop", "length")
    _wait(lambda: _replica_ids(address, env, "LLMDecoder") not in ([], decoder_before), "the new decoder replica")
    # The new replica's actor is alive before it is ready (it still loads the model): healthy once it is.
    _wait(lambda: httpx.get(f"{base}/health", timeout=30).status_code == 200, "health after the redeploy")


def _replica_ids(address: str, env: dict[str, str], deployment: str) -> list[str]:
    """Names of the deployment's live replica actors, from the cluster's state API."""
    out = _run(str(BIN / "ray"), "list", "actors", "--address", address, "--filter", "state=ALIVE", "--format", "json", "--limit", "1000", env=env)
    return sorted(a["name"] for a in json.loads(out) if a.get("name", "").startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"])
