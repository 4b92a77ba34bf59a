"""The durable store behind the Responses and Conversations APIs (see schema.py for the tables).

Every method takes `owner` (the API key id) first and filters on it: another owner's objects are
invisible (get → None, delete → False, list → NotFound). Ids are the caller's. Items are JSON dicts
in OpenAI's Responses item shape, each with an `"id"`; any dict inside an item with a
`"media_sha256"` key references a media row of the same owner, and deleting the last item that
references it deletes the media row too.

A response is created `in_progress` with a lease; its generator heartbeats (partial output into
the body, lease extended) and finishes it. A replica that dies mid-generation leaves the lease to
expire: `sweep_stale` marks such responses incomplete ("interrupted"), keeping the partial output.
Finishing a response bound to a conversation appends the turn (inputs, then outputs) to the
conversation in the same transaction, at positions claimed from the conversation's counter, so
concurrent turns never interleave.

PostgreSQL lock order, kept by every writer so that none deadlocks: a response row before its
conversation row, a conversation row before its items.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import fields
from typing import Any

from sqlalchemy import delete, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from serve.store import migrate, threaded
from serve.store.config import StoreConfig
from serve.store.media_audit import MediaAuditRetention
from serve.store.queries import (
    CONVERSATION_ITEM_MEDIA,
    CONVERSATION_ITEMS,
    CONVERSATIONS,
    RESPONSE_ITEM_MEDIA,
    RESPONSE_ITEMS,
    RESPONSES,
    check_id,
    check_page,
    claim_positions,
    conversation_not_found,
    conversation_page,
    drop_unreferenced_media,
    held_item_ids,
    insert_items,
    item_ids,
    page,
    referenced_media,
    response_not_found,
    row_exists,
)
from serve.store.records import ConversationRecord, Page, ResponseRecord
from serve.store.schema import MODEL_LEN

IN_PROGRESS = "in_progress"
FINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})
INPUT, OUTPUT = "input", "output"
MAX_CHAIN_DEPTH = 1000  # previous_response_id hops followed; older context is dropped


class Store(MediaAuditRetention):
    """Open with `await Store.open(config)`; `close()` when done. Safe for concurrent use within
    one event loop, and across processes and replicas sharing the database."""

    def __init__(self, config: StoreConfig, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.backend: str = engine.dialect.name  # "sqlite" | "postgresql"
        self._engine = engine
        self._writer = migrate.writer(engine)
        self._clock = clock
        # SQLite: statements through one worker thread (threaded.py), not aiosqlite's round trips
        self._sync = threaded.sync_engine(str(engine.url)) if self.backend == "sqlite" else None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chorus-store") if self._sync else None
        # One write transaction at a time in this process: a second BEGIN IMMEDIATE would wait for
        # SQLite's write lock inside the one worker, ahead of the statements of the transaction
        # holding it (a deadlock until busy_timeout). SQLite has one writer at a time anyway.
        self._write_lock = asyncio.Lock()
        self._read_slots = asyncio.Semaphore(threaded.READERS)
        self._upsert = postgresql.insert if self.backend == "postgresql" else sqlite.insert

    @classmethod
    async def open(cls, config: StoreConfig, *, clock: Callable[[], float] = time.time) -> Store:
        """Connect and migrate the schema to head (a no-op when another process already did)."""
        engine = migrate.create_engine(config.url())
        try:
            await migrate.upgrade(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(config, engine, clock)

    async def close(self) -> None:
        if self._sync is not None:
            await asyncio.get_running_loop().run_in_executor(self._worker, self._sync.dispose)
            self._worker.shutdown(wait=True)
        await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """For tests and ops tooling; the API goes through the methods."""
        return self._engine

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._sync is not None:
            async with self._write_lock, self._threaded(write=True) as conn:
                yield conn
            return
        async with self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        if self._sync is not None:
            async with self._read_slots, self._threaded(write=False) as conn:
                yield conn
            return
        async with self._engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _threaded(self, write: bool) -> AsyncIterator[Any]:
        conn = threaded.ThreadConnection(self._sync, self._worker, write)
        try:
            await conn.begin()
            yield conn
        except BaseException:
            # Shielded: a cancelled caller's transaction still ends (its rollback queues behind
            # the statement it was waiting on, in the one worker).
            await asyncio.shield(conn.end(commit=False))
            raise
        await conn.end(commit=True)

    # ---- responses -------------------------------------------------------------------------

    async def create_response(
        self,
        owner: str,
        response_id: str,
        *,
        created_at: float,
        model: str,
        body: dict,
        input_items: list[dict],
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
    ) -> None:
        """The response row (in_progress, leased) and its input items, in one transaction."""
        check_id(response_id, "response_id")
        if len(model) > MODEL_LEN:
            raise ValueError(f"model name longer than {MODEL_LEN} characters")
        item_ids(input_items)
        now = self._clock()
        try:
            async with self._write() as conn:
                if previous_response_id is not None and not await row_exists(
                    conn, RESPONSES, owner, previous_response_id
                ):
                    raise response_not_found(previous_response_id, "previous_response_id")
                if conversation_id is not None and not await row_exists(conn, CONVERSATIONS, owner, conversation_id):
                    raise conversation_not_found(conversation_id, "conversation")
                await conn.execute(
                    insert(RESPONSES).values(
                        owner=owner,
                        id=response_id,
                        status=IN_PROGRESS,
                        model=model,
                        created_at=created_at,
                        updated_at=now,
                        lease_until=now + self.config.lease_s,
                        previous_response_id=previous_response_id,
                        conversation_id=conversation_id,
                        body=body,
                    )
                )
                await self._insert_response_items(conn, owner, response_id, INPUT, input_items, start=0)
        except IntegrityError as e:
            raise ValueError(f"a response with id '{response_id}' already exists") from e

    async def heartbeat(self, owner: str, response_id: str, *, body: dict) -> bool:
        """Save the partial output (`body`) and extend the lease. False when the response is no
        longer in progress (finished, swept, cancelled or deleted elsewhere): stop generating."""
        now = self._clock()
        async with self._write() as conn:
            result = await conn.execute(
                update(RESPONSES)
                .where(RESPONSES.c.owner == owner, RESPONSES.c.id == response_id, RESPONSES.c.status == IN_PROGRESS)
                .values(body=body, lease_until=now + self.config.lease_s, updated_at=now)
            )
        return result.rowcount == 1

    async def finish_response(
        self, owner: str, response_id: str, *, status: str, body: dict, output_items: list[dict]
    ) -> bool:
        """Final status, body and output items; the turn appended to its conversation, if any. All
        in one transaction. A response no longer in progress is left alone (returns False)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {sorted(FINAL_STATUSES)}, got {status!r}")
        item_ids(output_items)
        now = self._clock()
        async with self._write() as conn:
            # The status guard makes this idempotent; on PostgreSQL the row lock serializes racers.
            row = (
                await conn.execute(
                    update(RESPONSES)
                    .where(RESPONSES.c.owner == owner, RESPONSES.c.id == response_id, RESPONSES.c.status == IN_PROGRESS)
                    .values(status=status, body=body, lease_until=None, updated_at=now)
                    .returning(RESPONSES.c.conversation_id)
                )
            ).first()
            if row is None:
                return False
            inputs = (
                await conn.execute(
                    select(RESPONSE_ITEMS.c.data)
                    .where(
                        RESPONSE_ITEMS.c.owner == owner,
                        RESPONSE_ITEMS.c.response_id == response_id,
                        RESPONSE_ITEMS.c.kind == INPUT,
                    )
                    .order_by(RESPONSE_ITEMS.c.position)
                )
            ).scalars().all()
            try:
                await self._insert_response_items(conn, owner, response_id, OUTPUT, output_items, start=len(inputs))
            except IntegrityError as e:
                raise ValueError(f"an output item id of response '{response_id}' repeats an input item's") from e
            if row.conversation_id is not None:
                await self._append_turn(conn, owner, response_id, row.conversation_id, [*inputs, *output_items], now)
        return True

    async def _append_turn(
        self, conn: AsyncConnection, owner: str, response_id: str, conversation_id: str, items: list[dict], now: float
    ) -> None:
        """The turn's items at contiguous positions of the conversation (their ids are unique within
        the response: its constraint). An item whose id the conversation already holds (a client
        re-sending an earlier item) is not added twice: bookkeeping must not fail a turn whose
        output exists."""
        start = await claim_positions(conn, owner, conversation_id, len(items), now)
        if start is None:  # the conversation was deleted while the response ran
            await conn.execute(
                update(RESPONSES)
                .where(RESPONSES.c.owner == owner, RESPONSES.c.id == response_id)
                .values(conversation_id=None)
            )
            return
        held = await held_item_ids(conn, owner, conversation_id, [item["id"] for item in items])
        await self._insert_conversation_items(
            conn, owner, conversation_id, [item for item in items if item["id"] not in held], start
        )

    async def get_response(self, owner: str, response_id: str) -> ResponseRecord | None:
        r = RESPONSES
        columns = [r.c[f.name] for f in fields(ResponseRecord)]  # the record's fields are columns
        async with self._read() as conn:
            row = (await conn.execute(select(*columns).where(r.c.owner == owner, r.c.id == response_id))).first()
        return None if row is None else ResponseRecord(**row._mapping)

    async def delete_response(self, owner: str, response_id: str) -> bool:
        """The response, its items and the media only they referenced. Conversation items appended
        from it stay (they belong to the conversation); a follow-up's chain ends here."""
        async with self._write() as conn:
            shas = await referenced_media(conn, RESPONSE_ITEM_MEDIA, owner, RESPONSE_ITEM_MEDIA.c.response_id == response_id)
            result = await conn.execute(
                delete(RESPONSES).where(RESPONSES.c.owner == owner, RESPONSES.c.id == response_id)
            )  # items and their media references cascade
            if result.rowcount == 0:
                return False
            await drop_unreferenced_media(conn, owner, shas)
        return True

    async def input_items(
        self, owner: str, response_id: str, *, after: str | None = None, limit: int = 20, order: str = "desc"
    ) -> Page:
        check_page(limit, order)
        ri = RESPONSE_ITEMS
        async with self._read() as conn:
            if not await row_exists(conn, RESPONSES, owner, response_id):
                raise response_not_found(response_id)
            where = (ri.c.owner == owner, ri.c.response_id == response_id, ri.c.kind == INPUT)
            return await page(conn, ri, where, after, limit, order)

    async def chain_items(self, owner: str, response_id: str) -> list[dict]:
        """What a follow-up with `previous_response_id=response_id` sees: each response of the
        chain, oldest first, its inputs then its outputs. At most MAX_CHAIN_DEPTH responses; a
        cycle (possible only through reused ids) ends the chain."""
        r, prev = RESPONSES, RESPONSES.alias("prev")
        chain = (
            select(r.c.id, r.c.previous_response_id, literal(0).label("depth"))
            .where(r.c.owner == owner, r.c.id == response_id)
            .cte("chain", recursive=True)
        )
        chain = chain.union_all(
            select(prev.c.id, prev.c.previous_response_id, chain.c.depth + 1).where(
                prev.c.owner == owner, prev.c.id == chain.c.previous_response_id, chain.c.depth < MAX_CHAIN_DEPTH - 1
            )
        )
        async with self._read() as conn:
            ids: list[str] = []
            for rid in (await conn.execute(select(chain.c.id).order_by(chain.c.depth))).scalars():
                if rid in ids:
                    break
                ids.append(rid)
            if not ids:
                raise response_not_found(response_id, "previous_response_id")
            rows = await conn.execute(
                select(RESPONSE_ITEMS.c.response_id, RESPONSE_ITEMS.c.data)
                .where(RESPONSE_ITEMS.c.owner == owner, RESPONSE_ITEMS.c.response_id.in_(ids))
                .order_by(RESPONSE_ITEMS.c.position)
            )
            by_response: dict[str, list[dict]] = {rid: [] for rid in ids}
            for rid, data in rows:
                by_response[rid].append(data)
        return [item for rid in reversed(ids) for item in by_response[rid]]

    async def sweep_stale(self, now: float | None = None) -> int:
        """In-progress responses whose lease expired → incomplete ("interrupted"), partial output
        kept. Returns how many."""
        now = self._clock() if now is None else now
        stale = (RESPONSES.c.status == IN_PROGRESS, RESPONSES.c.lease_until < now)
        swept = 0
        async with self._write() as conn:
            rows = (
                await conn.execute(
                    select(RESPONSES.c.owner, RESPONSES.c.id, RESPONSES.c.body)
                    .where(*stale)
                    .with_for_update(skip_locked=True)  # another replica's sweep takes the others
                )
            ).all()
            for owner, response_id, body in rows:
                body = {**body, "status": "incomplete", "incomplete_details": {"reason": "interrupted"}}
                result = await conn.execute(
                    update(RESPONSES)
                    .where(RESPONSES.c.owner == owner, RESPONSES.c.id == response_id, *stale)
                    .values(status="incomplete", body=body, lease_until=None, updated_at=now)
                )
                swept += result.rowcount
        return swept

    # ---- conversations ---------------------------------------------------------------------

    async def create_conversation(
        self, owner: str, conversation_id: str, *, created_at: float, metadata: dict[str, str], items: list[dict]
    ) -> ConversationRecord:
        check_id(conversation_id, "conversation_id")
        item_ids(items)
        try:
            async with self._write() as conn:
                await conn.execute(
                    insert(CONVERSATIONS).values(
                        owner=owner,
                        id=conversation_id,
                        created_at=created_at,
                        updated_at=self._clock(),
                        metadata=metadata,
                        next_position=len(items),
                    )
                )
                await self._insert_conversation_items(conn, owner, conversation_id, items, start=0)
        except IntegrityError as e:
            raise ValueError(f"a conversation with id '{conversation_id}' already exists") from e
        return ConversationRecord(id=conversation_id, created_at=created_at, metadata=metadata)

    async def get_conversation(self, owner: str, conversation_id: str) -> ConversationRecord | None:
        c = CONVERSATIONS
        async with self._read() as conn:
            query = select(c.c.created_at, c.c.metadata).where(c.c.owner == owner, c.c.id == conversation_id)
            row = (await conn.execute(query)).first()
        return None if row is None else ConversationRecord(conversation_id, row.created_at, row.metadata)

    async def update_conversation(
        self, owner: str, conversation_id: str, metadata: dict[str, str]
    ) -> ConversationRecord | None:
        """Replaces the metadata (as OpenAI's update does)."""
        c = CONVERSATIONS
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(c)
                    .where(c.c.owner == owner, c.c.id == conversation_id)
                    .values(metadata=metadata, updated_at=self._clock())
                    .returning(c.c.created_at)
                )
            ).first()
        return None if row is None else ConversationRecord(conversation_id, row.created_at, metadata)

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        """The conversation, its items and the media only they referenced; responses bound to it
        stay, unbound (conversation_id nulled)."""
        refs = CONVERSATION_ITEM_MEDIA
        async with self._write() as conn:
            await conn.execute(  # responses first: the lock order (module docstring)
                update(RESPONSES)
                .where(RESPONSES.c.owner == owner, RESPONSES.c.conversation_id == conversation_id)
                .values(conversation_id=None)
            )
            shas = await referenced_media(conn, refs, owner, refs.c.conversation_id == conversation_id)
            result = await conn.execute(
                delete(CONVERSATIONS).where(CONVERSATIONS.c.owner == owner, CONVERSATIONS.c.id == conversation_id)
            )  # items and their media references cascade
            if result.rowcount == 0:
                return False
            await drop_unreferenced_media(conn, owner, shas)
        return True

    async def conversation_items(
        self, owner: str, conversation_id: str, *, after: str | None = None, limit: int = 20, order: str = "desc"
    ) -> Page:
        check_page(limit, order)
        ci = CONVERSATION_ITEMS
        async with self._read() as conn:
            if not await row_exists(conn, CONVERSATIONS, owner, conversation_id):
                raise conversation_not_found(conversation_id)
            return await page(conn, ci, (ci.c.owner == owner, ci.c.conversation_id == conversation_id), after, limit, order)

    async def list_conversations(
        self, owner: str, *, after: str | None = None, limit: int = 20, order: str = "desc"
    ) -> Page[ConversationRecord]:
        """The owner's conversations by creation time, a page at a time (`after`: one of them)."""
        async with self._read() as conn:
            return await conversation_page(conn, owner, after, limit, order)

    async def all_conversation_items(self, owner: str, conversation_id: str) -> list[dict]:
        """Every item in order, for building a prompt."""
        ci = CONVERSATION_ITEMS
        async with self._read() as conn:
            if not await row_exists(conn, CONVERSATIONS, owner, conversation_id):
                raise conversation_not_found(conversation_id, "conversation")
            rows = await conn.execute(
                select(ci.c.data)
                .where(ci.c.owner == owner, ci.c.conversation_id == conversation_id)
                .order_by(ci.c.position)
            )
            return list(rows.scalars())

    async def add_conversation_items(self, owner: str, conversation_id: str, items: list[dict]) -> list[dict]:
        """Appends `items`; an id the conversation already holds is a ValueError (nothing added)."""
        ids = item_ids(items)
        async with self._write() as conn:
            start = await claim_positions(conn, owner, conversation_id, len(items), self._clock())
            if start is None:
                raise conversation_not_found(conversation_id)
            held = await held_item_ids(conn, owner, conversation_id, ids)
            if held:
                raise ValueError(f"conversation '{conversation_id}' already has an item with id '{min(held)}'")
            await self._insert_conversation_items(conn, owner, conversation_id, items, start)
        return items

    async def get_conversation_item(self, owner: str, conversation_id: str, item_id: str) -> dict | None:
        ci = CONVERSATION_ITEMS
        query = select(ci.c.data).where(
            ci.c.owner == owner, ci.c.conversation_id == conversation_id, ci.c.item_id == item_id
        )
        async with self._read() as conn:
            return (await conn.execute(query)).scalar()

    async def delete_conversation_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        ci, refs = CONVERSATION_ITEMS, CONVERSATION_ITEM_MEDIA
        async with self._write() as conn:
            touched = await conn.execute(  # the conversation row before its items: the lock order
                update(CONVERSATIONS)
                .where(CONVERSATIONS.c.owner == owner, CONVERSATIONS.c.id == conversation_id)
                .values(updated_at=self._clock())
            )
            if touched.rowcount == 0:
                return False
            in_conversation = (ci.c.owner == owner, ci.c.conversation_id == conversation_id)
            position = (await conn.execute(select(ci.c.position).where(*in_conversation, ci.c.item_id == item_id))).scalar()
            if position is None:
                return False
            shas = await referenced_media(
                conn, refs, owner, refs.c.conversation_id == conversation_id, refs.c.position == position
            )
            await conn.execute(delete(ci).where(*in_conversation, ci.c.position == position))
            await drop_unreferenced_media(conn, owner, shas)
        return True

    # ---- helpers ---------------------------------------------------------------------------

    @staticmethod
    async def _insert_response_items(
        conn: AsyncConnection, owner: str, response_id: str, kind: str, items: list[dict], start: int
    ) -> None:
        key = {"owner": owner, "response_id": response_id}
        await insert_items(conn, RESPONSE_ITEMS, RESPONSE_ITEM_MEDIA, key, items, start, kind=kind)

    @staticmethod
    async def _insert_conversation_items(
        conn: AsyncConnection, owner: str, conversation_id: str, items: list[dict], start: int
    ) -> None:
        key = {"owner": owner, "conversation_id": conversation_id}
        await insert_items(conn, CONVERSATION_ITEMS, CONVERSATION_ITEM_MEDIA, key, items, start)
