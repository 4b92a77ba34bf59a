"""Local TCP ports for the clusters, services and tests Chorus starts on one host."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nobody holds now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether `port` can be bound on every interface now."""
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
