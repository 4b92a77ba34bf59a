"""`chorus serve`'s choice of Ray cluster: a stale address file must not make `make serve` hang."""

from __future__ import annotations

import socket

import pytest

import serve.cli as cli


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
