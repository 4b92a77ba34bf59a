"""Retention: what `Store.purge` deletes, in batches of PURGE_BATCH rows per transaction (a SQLite
writer waits, up to its busy timeout, while one runs).

- responses and conversations (with their items and media references) not updated for
  `retention_days`; responses bound to a purged conversation are unbound;
- media unused (`put_media`/`get_media`) for `media_retention_days`, even if an item still names
  it (the item keeps the text derived from it), and media no item references, once it is older
  than UNREFERENCED_MEDIA_GRACE_S (media is stored before the items that name it);
- audit rows older than `audit_retention_days`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from sqlalchemy import Column, Table, delete, exists, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from serve.store.config import StoreConfig
from serve.store.queries import (
    AUDIT,
    CONVERSATION_ITEMS,
    CONVERSATIONS,
    MEDIA,
    RESPONSE_ITEMS,
    RESPONSES,
    media_is_referenced,
)

DAY_S = 86_400.0
PURGE_BATCH = 500
UNREFERENCED_MEDIA_GRACE_S = 3600.0
TABLES = ("responses", "response_items", "conversations", "conversation_items", "media", "audit")

Transaction = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


async def purge(write: Transaction, config: StoreConfig, now: float) -> dict[str, int]:
    """Deletes what `config` lets go of at `now`; the rows deleted per table. `write()` opens a
    write transaction."""
    counts = dict.fromkeys(TABLES, 0)
    if config.retention_days is not None:
        cutoff = now - config.retention_days * DAY_S
        await _purge_containers(write, RESPONSES, RESPONSE_ITEMS, RESPONSE_ITEMS.c.response_id, cutoff, counts)
        await _purge_containers(
            write, CONVERSATIONS, CONVERSATION_ITEMS, CONVERSATION_ITEMS.c.conversation_id, cutoff, counts
        )
        # A transaction of its own: locking conversations and then responses in one transaction
        # would be the reverse of finish_response's order (a PostgreSQL deadlock).
        async with write() as conn:
            gone = ~exists().where(
                CONVERSATIONS.c.owner == RESPONSES.c.owner, CONVERSATIONS.c.id == RESPONSES.c.conversation_id
            )
            await conn.execute(
                update(RESPONSES).where(RESPONSES.c.conversation_id.is_not(None), gone).values(conversation_id=None)
            )
    counts["media"] = await _purge_media(write, config, now)
    if config.audit_retention_days is not None:
        cutoff = now - config.audit_retention_days * DAY_S
        while True:
            async with write() as conn:
                batch = select(AUDIT.c.id).where(AUDIT.c.at < cutoff).limit(PURGE_BATCH).scalar_subquery()
                deleted = (await conn.execute(delete(AUDIT).where(AUDIT.c.id.in_(batch)))).rowcount
            counts["audit"] += deleted
            if deleted < PURGE_BATCH:
                break
    return counts


async def _purge_containers(
    write: Transaction, parents: Table, items: Table, parent_col: Column, cutoff: float, counts: dict[str, int]
) -> None:
    """Responses or conversations not updated since `cutoff`, their items first (to count them;
    the media references cascade)."""
    while True:
        async with write() as conn:
            keys = (
                await conn.execute(
                    select(parents.c.owner, parents.c.id)
                    .where(parents.c.updated_at < cutoff)
                    .limit(PURGE_BATCH)
                    .with_for_update(skip_locked=True)  # PostgreSQL: rows in use are left for the next purge
                )
            ).all()
            if not keys:
                return
            keys = [tuple(key) for key in keys]
            counts[items.name] += (
                await conn.execute(delete(items).where(tuple_(items.c.owner, parent_col).in_(keys)))
            ).rowcount
            counts[parents.name] += (
                await conn.execute(delete(parents).where(tuple_(parents.c.owner, parents.c.id).in_(keys)))
            ).rowcount
        if len(keys) < PURGE_BATCH:
            return


async def _purge_media(write: Transaction, config: StoreConfig, now: float) -> int:
    stale = (MEDIA.c.last_used < now - UNREFERENCED_MEDIA_GRACE_S) & ~media_is_referenced()
    if config.media_retention_days is not None:
        stale = stale | (MEDIA.c.last_used < now - config.media_retention_days * DAY_S)
    total = 0
    while True:
        async with write() as conn:
            found = await conn.execute(select(MEDIA.c.owner, MEDIA.c.sha256).where(stale).limit(PURGE_BATCH))
            keys = [tuple(key) for key in found]
            if not keys:
                return total
            # `stale` again: on PostgreSQL a use since the select keeps the row
            result = await conn.execute(delete(MEDIA).where(tuple_(MEDIA.c.owner, MEDIA.c.sha256).in_(keys), stale))
            total += result.rowcount
        if len(keys) < PURGE_BATCH:
            return total
