"""Alembic environment. `serve.store.migrate.upgrade` passes an open connection (holding the
migration lock) in `config.attributes["connection"]`. Without one it connects by itself to
`sqlalchemy.url` (or the StoreConfig default): that is how the next revision is drafted, against a
database at head, e.g.

    cfg = serve.store.migrate.alembic_config(); cfg.set_main_option("sqlalchemy.url", url)
    alembic.command.revision(cfg, "what changed", autogenerate=True, rev_id="0002")

then edited by hand and checked by tests/unit/test_store.py (migrated schema == schema.py)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from serve.store.config import StoreConfig
from serve.store.schema import Base

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite alters tables by copying them: later revisions' ALTERs then work on both backends.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported: the store migrates itself on open")
connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_standalone(config.get_main_option("sqlalchemy.url") or StoreConfig().url()))
