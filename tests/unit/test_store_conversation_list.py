"""The conversations list (GET /v1/conversations, a Chorus extension): `Store.list_conversations` on
both backends, as tests/unit/test_store.py runs the store, and `ConversationsService.list` over it."""

from __future__ import annotations

import asyncio

import pytest

from serve.errors import InvalidRequest
from serve.errors import NotFound as ApiNotFound
from serve.protocol.responses import ConversationCreateRequest
from serve.services.conversations import ConversationsService
from serve.services.responses import StoreAccess
from serve.store import NotFound, Store, StoreConfig

T0 = 1_700_000_000.0
A, B, C = "key_a", "key_b", "key_c"


from tests.helpers.postgres import store_config  # noqa: E402,F401 - the `config` fixture: SQLite, then PostgreSQL


async def ids(store: Store, owner: str, **page) -> tuple[list[str], bool, str | None, str | None]:
    got = await store.list_conversations(owner, **page)
    return [r.id for r in got.items], got.has_more, got.first_id, got.last_id


def test_list_conversations_pages_an_owners_conversations_by_creation_time(config):
    async def scenario():
        store = await Store.open(config)
        try:
            # created out of id order; conv_d and conv_c share a creation time (the id breaks the tie)
            for cid, at in (("conv_e", 1), ("conv_b", 2), ("conv_d", 3), ("conv_c", 3), ("conv_a", 4), ("conv_x", 5)):
                await store.create_conversation(A, cid, created_at=T0 + at, metadata={"n": cid}, items=[])
            await store.create_conversation(B, "conv_b", created_at=T0, metadata={"tenant": "b"}, items=[])  # A's id, B's own
            assert await store.delete_conversation(A, "conv_x")  # deleted: never listed

            everything = ["conv_e", "conv_b", "conv_c", "conv_d", "conv_a"]
            assert await ids(store, A, limit=100, order="asc") == (everything, False, "conv_e", "conv_a")
            assert await ids(store, A, limit=100) == (everything[::-1], False, "conv_a", "conv_e")  # desc by default
            assert [r.metadata for r in (await store.list_conversations(A, limit=1, order="asc")).items] == [{"n": "conv_e"}]
            listed = (await store.list_conversations(A, limit=100)).items
            assert listed == [await store.get_conversation(A, r.id) for r in listed]

            # pages, asc and desc, across the tie
            assert await ids(store, A, limit=2, order="asc") == (["conv_e", "conv_b"], True, "conv_e", "conv_b")
            assert await ids(store, A, after="conv_b", limit=2, order="asc") == (["conv_c", "conv_d"], True, "conv_c", "conv_d")
            assert await ids(store, A, after="conv_c", limit=2, order="asc") == (["conv_d", "conv_a"], False, "conv_d", "conv_a")
            assert await ids(store, A, after="conv_d", limit=3, order="asc") == (["conv_a"], False, "conv_a", "conv_a")
            assert await ids(store, A, after="conv_a", limit=3, order="asc") == ([], False, None, None)
            assert await ids(store, A, limit=2, order="desc") == (["conv_a", "conv_d"], True, "conv_a", "conv_d")
            assert await ids(store, A, after="conv_d", limit=2, order="desc") == (["conv_c", "conv_b"], True, "conv_c", "conv_b")
            assert await ids(store, A, after="conv_b", limit=2, order="desc") == (["conv_e"], False, "conv_e", "conv_e")
            assert await ids(store, A, after="conv_e", limit=2, order="desc") == ([], False, None, None)
            assert await ids(store, A, limit=5, order="asc") == (everything, False, "conv_e", "conv_a")  # exactly a page

            # owners: B sees its one conversation, C none; A's ids are not B's `after`
            assert await ids(store, B, limit=100) == (["conv_b"], False, "conv_b", "conv_b")
            assert (await store.list_conversations(B, limit=100)).items[0].metadata == {"tenant": "b"}
            assert await ids(store, C, limit=100) == ([], False, None, None)
            for owner, after in ((A, "nope"), (A, "conv_x"), (B, "conv_a"), (C, "conv_a")):
                with pytest.raises(NotFound, match=f"No conversation found with id '{after}'") as e:
                    await store.list_conversations(owner, after=after, limit=2, order="asc")
                assert e.value.param == "after"
            with pytest.raises(ValueError):
                await store.list_conversations(A, limit=0, order="asc")
            with pytest.raises(ValueError):
                await store.list_conversations(A, limit=2, order="sideways")
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_service_lists_conversations_as_retrieve_returns_them(tmp_path):
    access = StoreAccess(StoreConfig(data_dir=str(tmp_path / "data")))
    service = ConversationsService(access)
    off = ConversationsService(StoreAccess(StoreConfig(enabled=False)))

    async def scenario():
        try:
            made = [await service.create(A, ConversationCreateRequest(metadata={"n": str(i)})) for i in range(3)]
            first = await service.list(A, None, 2, "asc")
            rest = await service.list(A, first["last_id"], 2, "asc")
            newest = await service.list(A, None, 20, "desc")
            other = await service.list(B, None, 20, "desc")
            with pytest.raises(ApiNotFound) as unknown:
                await service.list(B, made[0]["id"], 20, "desc")
            with pytest.raises(InvalidRequest) as disabled:
                await off.list(A, None, 20, "desc")
        finally:
            await access.close()
        return made, first, rest, newest, other, unknown.value, disabled.value

    made, first, rest, newest, other, unknown, disabled = asyncio.run(scenario())
    ids_ = [c["id"] for c in made]
    assert first == {"object": "list", "data": made[:2], "first_id": ids_[0], "last_id": ids_[1], "has_more": True}
    assert rest == {"object": "list", "data": made[2:], "first_id": ids_[2], "last_id": ids_[2], "has_more": False}
    assert newest["data"] == made[::-1] and not newest["has_more"]
    assert other == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert (unknown.param, unknown.code) == ("after", "not_found")
    assert disabled.code == "store_disabled"
