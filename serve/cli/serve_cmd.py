"""`chorus serve`: `serve run` a Serve config in the foreground, say how to try it once it is healthy,
and stop it (and the Ray cluster it started) on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

from serve.cli.common import REPO_ROOT, add_command

DEFAULT_SERVE_CONFIG = REPO_ROOT / "deploy" / "local.yaml"
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_MODEL_NAME = "chorus"
READY_TIMEOUT_S = 600.0
READY_POLL_S = 2.0
HEALTH_TIMEOUT_S = 5.0
STOP_GRACE_S = 30.0  # how long `serve run` may take to shut down after Ctrl-C / SIGTERM


def add_parser(subparsers) -> None:
    run = add_command(
        subparsers, "serve", "run the service with a Serve config file (foreground)", _cmd_serve,
        description="Run the service: `serve run CONFIG` in the foreground, on the Ray cluster RAY_ADDRESS names, "
        "a live one Ray recorded, or else a fresh local one (HAProxy in front with CHORUS_HAPROXY=1). Prints how "
        "to try it once /health answers; Ctrl-C or SIGTERM stops it and the cluster it started.",
    )
    run.add_argument("--config", default=str(DEFAULT_SERVE_CONFIG), help="Serve config YAML")


def _try_it(base: str, model: str) -> str:
    return f"""
Chorus is up at {base}  (OpenAI-compatible; model id "{model}")

  curl {base}/health
  curl {base}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Where is my parcel?"}}]}}'
  curl {base}/v1/audio/transcriptions -F model=whisper-1 -F file=@samples/audio/where_is_my_order.wav
  .venv/bin/python samples/openai_audio.py        # the official openai client, speech in

Ctrl-C (or a SIGTERM to this process) stops it.
"""


def _cmd_serve(args: argparse.Namespace) -> int:
    """`serve run` the config in the foreground; once healthy, print how to try it."""
    import subprocess

    import yaml

    from serve import haproxy

    config = yaml.safe_load(Path(args.config).read_text())
    http = config.get("http_options") or {}
    base = f"http://{http.get('host', DEFAULT_HTTP_HOST)}:{http.get('port', DEFAULT_HTTP_PORT)}"
    model = (config["applications"][0].get("args") or {}).get("served_model_name", DEFAULT_MODEL_NAME)
    serve_bin = Path(sys.executable).with_name("serve")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    address_args = _serve_run_address_args()
    # With CHORUS_HAPROXY=1 a cluster `serve run` starts itself serves through HAProxy
    # (serve/haproxy.py); one it joins keeps the ingress it was started with.
    proxy_env = haproxy.cluster_env() if address_args else {}
    command = [str(serve_bin), "run", *address_args, str(args.config)]
    try:
        proc = subprocess.Popen(command, env={**env, **proxy_env}, cwd=REPO_ROOT, preexec_fn=_default_sigint)
        return _supervise(proc, lambda: _announce_when_healthy(base, model))
    finally:
        haproxy.cleanup(proxy_env)


def _announce_when_healthy(base: str, model: str) -> bool:
    """Whether `base/health` answers 200; the first time it does, print how to try the service."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/health", timeout=HEALTH_TIMEOUT_S) as resp:
            if resp.status == 200:
                print(_try_it(base, model), flush=True)
                return True
    except OSError:
        pass
    return False


def _default_sigint() -> None:
    """In the `serve run` child: Ctrl-C's default action back, even where this process ignores it
    (a shell starts background jobs with SIGINT ignored, and children inherit that), so that the
    SIGINT `_stop` sends always reaches Serve's shutdown."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _supervise(proc, ready=None, poll_s: float = READY_POLL_S) -> int:
    """Wait for the `serve run` child in the foreground, calling `ready()` every `poll_s` until it
    says True. Ctrl-C or SIGTERM (`kill`, a process manager) stop the child as Ctrl-C stops it
    (`_stop`); without the SIGTERM handler the child and the Ray cluster it started outlived us."""
    import signal

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while ready is not None and proc.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(poll_s)
        return proc.wait()
    except KeyboardInterrupt:
        return _stop(proc)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(proc, grace_s: float = STOP_GRACE_S) -> int:
    """SIGINT (Serve shuts its applications down and stops the cluster it started), then SIGTERM if
    it is still running after `grace_s`; the child's exit status."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        return proc.wait()


def _serve_run_address_args() -> list[str]:
    """Extra `serve run` arguments choosing the Ray cluster.

    Left alone, `serve run` joins the cluster named in Ray's address file (written by `ray start`,
    and by a local cluster that is still up); a file left by a cluster that died uncleanly makes it
    wait forever for a GCS that is gone. So: RAY_ADDRESS set → as is; a recorded cluster whose GCS
    port answers → join it (e.g. one started with `ray start --head --metrics-export-port ...`);
    otherwise a fresh local cluster.
    """
    if os.environ.get("RAY_ADDRESS"):
        return []
    recorded = _recorded_ray_address()
    if recorded and _port_answers(recorded):
        return []
    return ["--address", "local"]


def _recorded_ray_address() -> str | None:
    try:
        from ray._private.utils import read_ray_address
    except ImportError:
        return None
    try:
        return read_ray_address() or None
    except OSError:
        return None


def _port_answers(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False
