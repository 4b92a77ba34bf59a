"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from modalities.llm.engine import BatchedEngine


@pytest.fixture
def make_engine():
    """Builds batched engines for a test and closes every one of them after it."""
    engines: list[BatchedEngine] = []

    def make(model, **kwargs) -> BatchedEngine:
        engines.append(BatchedEngine(model, **kwargs))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session (tests/helpers/postgres.py); missing binaries fail."""
    from tests.helpers.postgres import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer().start()
    except PostgresUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    """The DSN of a fresh, empty database on the session's server."""
    return postgres_server.create_database()
