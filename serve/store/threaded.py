"""SQLite through one worker thread, one round trip per statement.

aiosqlite, SQLAlchemy's async SQLite driver, runs every DB-API call on its own thread: a statement is
four round trips between the event loop and that thread (cursor, execute, fetch, close), ~0.2 ms each
on a 2-core VM, which made the store's statements, not their SQL, the cost of a stored turn
(docs/benchmarks.md, "Conversations"). Here a transaction's statements run on a synchronous
SQLAlchemy connection in a single worker thread, each in one call that also buffers its rows, and the
transaction begins and ends in one call each. Same Core statements, same pragmas and locking as the
async engine (migrate.py), which still runs the migrations.

One worker per store: a connection is only ever used by one thread at a time, and a cancelled
caller's cleanup (rollback) queues behind the statement it was waiting on instead of racing it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.pool import QueuePool

from serve.store import migrate

READERS = 8  # read transactions open at once per store (more wait on the event loop, not in the worker)


def sync_engine(async_url: str) -> Engine:
    """A synchronous engine (pysqlite) on the same SQLite file, with the store's pragmas and BEGINs."""
    url = make_url(async_url).set(drivername="sqlite+pysqlite")
    # The pool must never make the worker wait for a connection: a connection comes back only when
    # the worker ends its transaction, so a checkout that waits in the worker waits forever (found:
    # 20 concurrent turns, 13 transactions open, the 13th checkout blocking). The store bounds open
    # transactions on the event loop (READERS + one writer); overflow is unbounded for safety.
    engine = create_engine(
        url, poolclass=QueuePool, pool_size=READERS + 1, max_overflow=-1, connect_args={"check_same_thread": False}
    )
    migrate.sqlite_events(engine)
    return engine


class Buffered:
    """A statement's result, read in the worker: its rows in memory, its rowcount."""

    def __init__(self, result: Any) -> None:
        self.rowcount = result.rowcount
        self._frozen = result.freeze() if result.returns_rows else None

    def _result(self) -> Any:
        if self._frozen is None:
            raise TypeError("this statement returns no rows")
        return self._frozen()

    def __getattr__(self, name: str) -> Any:  # first(), all(), scalars(), mappings(), ... of the rows
        return getattr(self._result(), name)

    def __iter__(self):
        return iter(self._result())


class ThreadConnection:
    """What the store's methods use of an `AsyncConnection` (`await conn.execute(...)`), on a sync
    connection in the worker."""

    def __init__(self, engine: Engine, worker: ThreadPoolExecutor, write: bool) -> None:
        self._engine, self._worker, self._write = engine, worker, write
        self._conn: Connection | None = None

    async def _call(self, fn, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def begin(self) -> None:
        await self._call(self._begin)

    def _begin(self) -> None:
        engine = migrate.writer_options(self._engine) if self._write else self._engine
        self._conn = engine.connect()
        self._conn.begin()

    async def execute(self, statement: Any, parameters: Any = None) -> Buffered:
        return await self._call(self._execute, statement, parameters)

    def _execute(self, statement: Any, parameters: Any) -> Buffered:
        assert self._conn is not None
        return Buffered(self._conn.execute(statement, parameters))

    async def end(self, commit: bool) -> None:
        await self._call(self._end, commit)

    def _end(self, commit: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if commit:
                conn.commit()
            else:
                conn.rollback()
        finally:
            conn.close()
