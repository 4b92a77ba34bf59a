"""The Conversations API: a stored list of items that responses read from and append to.

Each call is one store operation under the caller's key: another key's conversation is "not found"
(404, never 403: no existence leak). Items are kept in the store's form (media by hash, with the
text read from it where a response read it) and returned in OpenAI's.
"""

from __future__ import annotations

import time
from typing import Any

from serve.errors import InvalidRequest, NotFound
from serve.protocol.responses import (
    ConversationCreateRequest,
    ConversationItemsRequest,
    ConversationUpdateRequest,
    new_id,
)
from serve.store import NotFound as StoreNotFound
from serve.store import Store

from .items import check_storable, item_dicts, public_form
from .responses import NO_STORE, StoreAccess, not_found, short


def conversation_body(record: Any) -> dict[str, Any]:
    return {"id": record.id, "object": "conversation", "created_at": int(record.created_at), "metadata": record.metadata or {}}


class ConversationsService:
    def __init__(self, store: StoreAccess) -> None:
        self.store = store

    async def _store(self) -> Store:
        store = await self.store.get()
        if store is None:
            raise InvalidRequest(f"conversations need the store; {NO_STORE}", code="store_disabled")
        return store

    async def create(self, owner: str, req: ConversationCreateRequest) -> dict[str, Any]:
        store = await self._store()
        fresh = item_dicts(req.items or [])
        check_storable(fresh, [f"items.{i}" for i in range(len(fresh))])
        items = await self.store.stored(owner, fresh, {})
        record = await store.create_conversation(
            owner, new_id("conv"), created_at=time.time(), metadata=req.metadata or {}, items=items
        )
        return conversation_body(record)

    async def retrieve(self, owner: str, conversation_id: str) -> dict[str, Any]:
        record = await (await self._store()).get_conversation(owner, conversation_id)
        if record is None:
            raise not_found("conversation", conversation_id)
        return conversation_body(record)

    async def update(self, owner: str, conversation_id: str, req: ConversationUpdateRequest) -> dict[str, Any]:
        record = await (await self._store()).update_conversation(owner, conversation_id, req.metadata)
        if record is None:
            raise not_found("conversation", conversation_id)
        return conversation_body(record)

    async def delete(self, owner: str, conversation_id: str) -> dict[str, Any]:
        if not await (await self._store()).delete_conversation(owner, conversation_id):
            raise not_found("conversation", conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def list(self, owner: str, after: str | None, limit: int, order: str) -> dict[str, Any]:
        """The caller's conversations (a Chorus extension: OpenAI has no such list), in the list
        shape of the items list, each as `retrieve` returns it."""
        try:
            page = await (await self._store()).list_conversations(owner, after=after, limit=limit, order=order)
        except StoreNotFound as err:
            raise NotFound(short(str(err)), param=err.param, code="not_found") from err
        data = [conversation_body(record) for record in page.items]
        return {"object": "list", "data": data, "first_id": page.first_id, "last_id": page.last_id, "has_more": page.has_more}

    async def list_items(self, owner: str, conversation_id: str, after: str | None, limit: int, order: str) -> dict[str, Any]:
        store = await self._store()
        try:
            page = await store.conversation_items(owner, conversation_id, after=after, limit=limit, order=order)
        except StoreNotFound as err:
            raise NotFound(short(str(err)), param=err.param, code="not_found") from err
        return await self.store.page(owner, page)

    async def add_items(self, owner: str, conversation_id: str, req: ConversationItemsRequest) -> dict[str, Any]:
        store = await self._store()
        if await store.get_conversation(owner, conversation_id) is None:
            raise not_found("conversation", conversation_id)
        fresh = item_dicts(req.items)
        check_storable(fresh, [f"items.{i}" for i in range(len(fresh))])
        items = await self.store.stored(owner, fresh, {})
        try:
            added = await store.add_conversation_items(owner, conversation_id, items)
        except StoreNotFound as err:
            raise NotFound(short(str(err)), param=err.param, code="not_found") from err
        media = await self.store.media_for(owner, added)
        data = [public_form(i, media) for i in added]
        return {"object": "list", "data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"], "has_more": False}

    async def get_item(self, owner: str, conversation_id: str, item_id: str) -> dict[str, Any]:
        store = await self._store()
        if await store.get_conversation(owner, conversation_id) is None:
            raise not_found("conversation", conversation_id)
        item = await store.get_conversation_item(owner, conversation_id, item_id)
        if item is None:
            raise not_found("item", item_id)
        return public_form(item, await self.store.media_for(owner, [item]))

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> dict[str, Any]:
        """OpenAI answers with the conversation the item was deleted from."""
        store = await self._store()
        record = await store.get_conversation(owner, conversation_id)
        if record is None:
            raise not_found("conversation", conversation_id)
        if not await store.delete_conversation_item(owner, conversation_id, item_id):
            raise not_found("item", item_id)
        return conversation_body(record)
