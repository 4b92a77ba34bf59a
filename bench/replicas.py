"""Resident memory of the Serve replicas a process started (the bench's service, the integration tests' app)."""

from __future__ import annotations

REPLICA_TITLE = "ServeReplica:chorus:"
MiB = 2**20


def replica_rss_mb() -> dict[str, float]:
    """RSS per replica (by deployment name) of the app this process started: its cluster's replicas
    descend from it (another cluster on the host, e.g. the deploy test's, does not)."""
    import psutil

    found: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = proc.cmdline()[0] if proc.cmdline() else ""
            if REPLICA_TITLE in title:
                name = title.split(REPLICA_TITLE, 1)[1].split()[0].split(".")[0]  # "Ingress.handle_request"
                # the largest process of that name: Ray may briefly run a helper process under
                # the replica's title, which is not the replica's own memory
                found[name] = max(found.get(name, 0.0), proc.memory_info().rss / MiB)
        except psutil.Error:  # ended meanwhile
            continue
    return found
