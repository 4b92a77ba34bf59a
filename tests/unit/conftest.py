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
