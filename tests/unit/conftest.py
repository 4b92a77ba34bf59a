"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from modalities.llm.engine import BatchedEngine
from tests.helpers.models import TINY_HIDDEN, frozen_tiny_llama
from tests.helpers.tokenizer import tiny_chat_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny chat tokenizer the fusion tests build prompts with (a module may override it)."""
    return tiny_chat_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    """A frozen random Llama of hidden size TINY_HIDDEN over that tokenizer (projector training's LLM)."""
    return frozen_tiny_llama(len(tokenizer), TINY_HIDDEN)


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
