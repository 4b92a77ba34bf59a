"""SQL building blocks the Store's methods share: the tables, input checks, item inserts with their
media references, pages, position claims. Each query function takes an open connection; the
caller owns the transaction."""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import ColumnElement, Table, delete, exists, insert, literal, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from serve.store.records import ConversationRecord, NotFound, Page
from serve.store.schema import (
    ID_LEN,
    AuditRow,
    Conversation,
    ConversationItem,
    ConversationItemMedia,
    Media,
    Response,
    ResponseItem,
    ResponseItemMedia,
)

RESPONSES: Table = Response.__table__
RESPONSE_ITEMS: Table = ResponseItem.__table__
CONVERSATIONS: Table = Conversation.__table__
CONVERSATION_ITEMS: Table = ConversationItem.__table__
MEDIA: Table = Media.__table__
RESPONSE_ITEM_MEDIA: Table = ResponseItemMedia.__table__
CONVERSATION_ITEM_MEDIA: Table = ConversationItemMedia.__table__
AUDIT: Table = AuditRow.__table__

ORDERS = ("asc", "desc")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def media_refs(item: object) -> set[str]:
    """The sha256 of every `{"media_sha256": ...}` anywhere inside `item`."""
    found: set[str] = set()
    stack = [item]
    while stack:  # iterative: a client's deeply nested JSON must not hit the recursion limit
        node = stack.pop()
        if isinstance(node, dict):
            sha = node.get("media_sha256")
            if isinstance(sha, str) and _SHA256_RE.fullmatch(sha):
                found.add(sha)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def check_id(value: object, what: str) -> None:
    if not isinstance(value, str) or not value or len(value) > ID_LEN:
        raise ValueError(f"{what} must be a non-empty string of at most {ID_LEN} characters, got {value!r:.80}")


def item_ids(items: Iterable[dict]) -> list[str]:
    """The items' ids, checked: present, short enough, unique among themselves."""
    ids: list[str] = []
    for item in items:
        item_id = item.get("id") if isinstance(item, dict) else None
        check_id(item_id, "an item's 'id'")
        ids.append(item_id)
    if len(set(ids)) < len(ids):
        raise ValueError(f"duplicate item id {next(i for i in ids if ids.count(i) > 1)!r}")
    return ids


def check_page(limit: int, order: str) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def response_not_found(response_id: str, param: str = "response_id") -> NotFound:
    return NotFound(f"No response found with id '{response_id}'.", param)


def conversation_not_found(conversation_id: str, param: str = "conversation_id") -> NotFound:
    return NotFound(f"No conversation found with id '{conversation_id}'.", param)


async def row_exists(conn: AsyncConnection, table: Table, owner: str, object_id: str) -> bool:
    query = select(literal(1)).where(table.c.owner == owner, table.c.id == object_id)
    return (await conn.execute(query)).first() is not None


async def page(conn: AsyncConnection, items: Table, where: tuple, after: str | None, limit: int, order: str) -> Page:
    """One page of `items` rows matching `where`, by position, starting after the item `after`."""
    position = items.c.position
    if after is not None:
        anchor = (await conn.execute(select(position).where(*where, items.c.item_id == after))).scalar()
        if anchor is None:
            raise NotFound(f"No item found with id '{after}'.", "after")
        where = (*where, position > anchor if order == "asc" else position < anchor)
    rows = await conn.execute(
        select(items.c.data)
        .where(*where)
        .order_by(position.asc() if order == "asc" else position.desc())
        .limit(limit + 1)  # one more tells has_more
    )
    found = list(rows.scalars())
    data = found[:limit]
    return Page(
        items=data,
        has_more=len(found) > limit,
        first_id=data[0]["id"] if data else None,
        last_id=data[-1]["id"] if data else None,
    )


async def conversation_page(
    conn: AsyncConnection, owner: str, after: str | None, limit: int, order: str
) -> Page[ConversationRecord]:
    """One page of the owner's conversations by creation time, then id (ties), starting after the
    conversation `after` (one of the owner's: anything else is NotFound, as for an item list)."""
    check_page(limit, order)
    c = CONVERSATIONS
    where: tuple = (c.c.owner == owner,)
    if after is not None:
        anchor = (await conn.execute(select(c.c.created_at).where(*where, c.c.id == after))).first()
        if anchor is None:
            raise conversation_not_found(after, "after")
        key, at = tuple_(c.c.created_at, c.c.id), tuple_(anchor.created_at, after)  # a row value: an index seek
        where = (*where, key > at if order == "asc" else key < at)
    by = (c.c.created_at, c.c.id) if order == "asc" else (c.c.created_at.desc(), c.c.id.desc())
    rows = (await conn.execute(select(c.c.id, c.c.created_at, c.c.metadata).where(*where).order_by(*by).limit(limit + 1))).all()
    data = [ConversationRecord(row.id, row.created_at, row.metadata) for row in rows[:limit]]
    return Page(
        items=data,
        has_more=len(rows) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


async def insert_items(
    conn: AsyncConnection, items_table: Table, refs_table: Table, key: dict, items: list[dict], start: int, **columns
) -> None:
    """`items` at positions start, start+1, ... of the container `key` (owner and container id
    columns), with a reference row per media they name."""
    if not items:
        return
    await conn.execute(
        insert(items_table),
        [{**key, **columns, "position": start + i, "item_id": item["id"], "data": item} for i, item in enumerate(items)],
    )
    refs = [
        {**key, "position": start + i, "sha256": sha} for i, item in enumerate(items) for sha in sorted(media_refs(item))
    ]
    if refs:
        await conn.execute(insert(refs_table), refs)


async def claim_positions(conn: AsyncConnection, owner: str, conversation_id: str, n: int, now: float) -> int | None:
    """The first of `n` fresh positions in the conversation (None: no such conversation). The
    counter moves in the caller's transaction, under the conversation's row lock (PostgreSQL) or
    the database's write lock (SQLite), so concurrent appends get disjoint ranges."""
    c = CONVERSATIONS
    row = (
        await conn.execute(
            update(c)
            .where(c.c.owner == owner, c.c.id == conversation_id)
            .values(next_position=c.c.next_position + n, updated_at=now)
            .returning(c.c.next_position)
        )
    ).first()
    return None if row is None else row.next_position - n


async def held_item_ids(conn: AsyncConnection, owner: str, conversation_id: str, ids: list[str]) -> set[str]:
    """Which of `ids` the conversation already holds."""
    if not ids:
        return set()
    ci = CONVERSATION_ITEMS
    rows = await conn.execute(
        select(ci.c.item_id).where(ci.c.owner == owner, ci.c.conversation_id == conversation_id, ci.c.item_id.in_(ids))
    )
    return set(rows.scalars())


async def referenced_media(conn: AsyncConnection, refs: Table, owner: str, *where: ColumnElement) -> set[str]:
    rows = await conn.execute(select(refs.c.sha256).distinct().where(refs.c.owner == owner, *where))
    return set(rows.scalars())


def media_is_referenced() -> ColumnElement[bool]:
    """SQL: some item (of a response or a conversation) references this media row."""
    return or_(
        *(
            exists().where(refs.c.owner == MEDIA.c.owner, refs.c.sha256 == MEDIA.c.sha256)
            for refs in (RESPONSE_ITEM_MEDIA, CONVERSATION_ITEM_MEDIA)
        )
    )


async def drop_unreferenced_media(conn: AsyncConnection, owner: str, shas: set[str]) -> int:
    """Deletes those of `shas` no item references any more (after their items were deleted)."""
    if not shas:
        return 0
    result = await conn.execute(
        delete(MEDIA).where(MEDIA.c.owner == owner, MEDIA.c.sha256.in_(shas), ~media_is_referenced())
    )
    return result.rowcount
