"""The engine (SQLite pragmas and write locking) and schema migrations to head.

SQLite: every connection gets WAL (readers never wait for the writer), synchronous=NORMAL (durable
at checkpoints, safe with WAL), foreign_keys=ON (the cascades the schema relies on are off by
default) and a busy timeout. sqlite3's own transaction handling is switched off so SQLAlchemy emits
BEGIN itself: write transactions start with `BEGIN IMMEDIATE`, taking the write lock up front,
because a deferred transaction that reads and then writes fails with SQLITE_BUSY (no waiting) when
another connection wrote in between.

Migrations run in code (no alembic.ini) from several processes at once safely: on PostgreSQL under
a transaction-scoped advisory lock, on SQLite inside one `BEGIN IMMEDIATE` transaction. The first
process migrates; the others wait, then find the schema at head and do nothing.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, event, make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5000
# pg_advisory_xact_lock takes a bigint; any fixed value unique to this application will do.
MIGRATION_LOCK_KEY = zlib.crc32(b"chorus.store.migrations")
WRITE_OPTION = "chorus_write"  # execution option: this transaction will write (SQLite: BEGIN IMMEDIATE)


def create_engine(url: str) -> AsyncEngine:
    """An async engine for `url`; a SQLite file's directory is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed)
        _sqlite_events(engine)
        return engine
    # Replicas outlive database restarts and failovers: test a pooled connection before use.
    return create_async_engine(parsed, pool_pre_ping=True)


def _sqlite_events(engine: AsyncEngine) -> None:
    sqlite_events(engine.sync_engine)


def sqlite_events(engine: Engine) -> None:
    """The pragmas on every new connection, and BEGIN IMMEDIATE for write transactions."""

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (below), not sqlite3
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching to WAL waits for other processes' locks like anything else.
        for pragma in (
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")


def writer_options(engine: Engine) -> Engine:
    """A sync engine's write transactions (SQLite: BEGIN IMMEDIATE)."""
    return engine.execution_options(**{WRITE_OPTION: True})


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool) whose transactions are writes."""
    return engine.execution_options(**{WRITE_OPTION: True})


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database to `revision` under the migration lock (see the module docstring)."""
    async with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        # Alembic sees a connection already in a transaction and leaves committing to us.
        await conn.run_sync(_upgrade, revision)


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def current_revision(conn: AsyncConnection) -> str | None:
    return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
