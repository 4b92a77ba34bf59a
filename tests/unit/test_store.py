"""serve/store on both backends: SQLite in tmp_path and a real PostgreSQL (tests/helpers/postgres.py),
each test on a fresh database. Coroutines run under asyncio.run (no pytest-asyncio here)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from serve.store import AuditEntry, NotFound, Store, StoreConfig, media_refs, migrate
from serve.store.config import DATA_DIR_ENV, DSN_ENV
from serve.store.retention import DAY_S, UNREFERENCED_MEDIA_GRACE_S
from serve.store.schema import Base

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
A, B = "key_a", "key_b"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


from tests.helpers.postgres import store_config  # noqa: E402,F401 - the `config` fixture: SQLite, then PostgreSQL


def run(coro):
    return asyncio.run(coro)


def msg(item_id: str, text_: str = "hi", role: str = "user", **extra) -> dict:
    kind = "input_text" if role == "user" else "output_text"
    return {"type": "message", "id": item_id, "role": role, "content": [{"type": kind, "text": text_, **extra}]}


def image_msg(item_id: str, *shas: str) -> dict:
    """An item whose media references sit deep inside (a list in a dict in a list)."""
    parts = [{"type": "input_image", "source": {"media_sha256": sha, "detail": "auto"}} for sha in shas]
    return {"type": "message", "id": item_id, "role": "user", "content": [{"type": "input_text", "text": "look"}, *parts]}


def body(response_id: str, status: str = "in_progress", output: list | None = None) -> dict:
    return {"id": response_id, "object": "response", "status": status, "output": output or []}


async def count(store: Store, table: str, **where) -> int:
    clause = " AND ".join(f"{column} = :{column}" for column in where) or "1 = 1"
    async with store.engine.connect() as conn:
        return (await conn.execute(text(f"SELECT count(*) FROM {table} WHERE {clause}"), where)).scalar()


async def new_response(store, owner, rid, inputs, clock=None, **kwargs):
    await store.create_response(
        owner, rid, created_at=clock() if clock else T0, model="tiny", body=body(rid), input_items=inputs, **kwargs
    )


async def turn(store, owner, rid, inputs, outputs, **kwargs):
    await new_response(store, owner, rid, inputs, **kwargs)
    assert await store.finish_response(owner, rid, status="completed", body=body(rid, "completed", outputs), output_items=outputs)


# ---- migrations --------------------------------------------------------------------------------


def _schema_diff(sync_conn):
    return compare_metadata(MigrationContext.configure(sync_conn, opts={"compare_type": True}), Base.metadata)


def test_migrations_create_the_models_schema_and_reopen_is_a_noop(config):
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()

    async def scenario():
        store = await Store.open(config)
        try:
            async with store.engine.connect() as conn:
                assert await conn.run_sync(_schema_diff) == []
                assert await migrate.current_revision(conn) == head
            await store.create_conversation(A, "conv_1", created_at=T0, metadata={"k": "v"}, items=[msg("m1")])
            again = await Store.open(config)  # a second instance (another replica) on the same database
            try:
                assert again.backend == store.backend == ("sqlite" if "sqlite" in config.url() else "postgresql")
                assert await count(again, "alembic_version") == 1
                assert (await again.get_conversation(A, "conv_1")).metadata == {"k": "v"}
                async with again.engine.connect() as conn:
                    assert await conn.run_sync(_schema_diff) == []
            finally:
                await again.close()
        finally:
            await store.close()

    run(scenario())


OPEN_SCRIPT = """
import asyncio
from serve.store import Store, StoreConfig

async def main():
    stores = await asyncio.gather(*(Store.open(StoreConfig()) for _ in range(2)))
    for store in stores:
        await store.close()

asyncio.run(main())
"""


def test_concurrent_opens_on_a_fresh_database(config):
    """Three processes, each opening twice at once, race to migrate one empty database."""
    env = {**os.environ, DSN_ENV: config.url(), "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN_SCRIPT], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    async def check():
        store = await Store.open(config)
        try:
            assert await count(store, "alembic_version") == 1
            async with store.engine.connect() as conn:
                assert await conn.run_sync(_schema_diff) == []
        finally:
            await store.close()

    run(check())


# ---- responses ---------------------------------------------------------------------------------


def test_response_lifecycle_and_input_pages(config):
    clock = Clock()

    async def scenario():
        store = await Store.open(config, clock=clock)
        try:
            inputs = [msg(f"in_{i}", f"question {i}") for i in range(5)]
            await new_response(store, A, "resp_1", inputs)
            got = await store.get_response(A, "resp_1")
            assert (got.status, got.model, got.created_at, got.body) == ("in_progress", "tiny", T0, body("resp_1"))

            partial = body("resp_1", output=[msg("out_0", "Hel", role="assistant")])
            assert await store.heartbeat(A, "resp_1", body=partial)
            assert (await store.get_response(A, "resp_1")).body == partial

            outputs = [msg("out_0", "Hello", role="assistant"), {"type": "reasoning", "id": "rs_1", "summary": []}]
            final = body("resp_1", "completed", outputs)
            assert await store.finish_response(A, "resp_1", status="completed", body=final, output_items=outputs)
            got = await store.get_response(A, "resp_1")
            assert (got.status, got.body) == ("completed", final)
            # finishing or heartbeating again changes nothing
            assert not await store.finish_response(A, "resp_1", status="failed", body=body("resp_1", "failed"), output_items=[msg("x")])
            assert not await store.heartbeat(A, "resp_1", body=partial)
            assert (await store.get_response(A, "resp_1")).body == final

            page = await store.input_items(A, "resp_1", limit=2, order="desc")
            assert [i["id"] for i in page.items] == ["in_4", "in_3"]
            assert (page.has_more, page.first_id, page.last_id) == (True, "in_4", "in_3")
            page = await store.input_items(A, "resp_1", after="in_3", limit=2, order="desc")
            assert [i["id"] for i in page.items] == ["in_2", "in_1"] and page.has_more
            page = await store.input_items(A, "resp_1", after="in_1", limit=2, order="desc")
            assert [i["id"] for i in page.items] == ["in_0"] and not page.has_more
            page = await store.input_items(A, "resp_1", limit=10, order="asc")
            assert page.items == inputs and not page.has_more  # outputs are not inputs
            page = await store.input_items(A, "resp_1", after="in_2", limit=2, order="asc")
            assert [i["id"] for i in page.items] == ["in_3", "in_4"] and not page.has_more
            page = await store.input_items(A, "resp_1", after="in_4", limit=2, order="asc")
            assert (page.items, page.has_more, page.first_id, page.last_id) == ([], False, None, None)

            with pytest.raises(NotFound, match="No item found with id 'in_9'") as e:
                await store.input_items(A, "resp_1", after="in_9", limit=2, order="asc")
            assert e.value.param == "after"
            with pytest.raises(NotFound, match="No response found with id 'resp_x'"):
                await store.input_items(A, "resp_x", limit=2, order="asc")
            with pytest.raises(NotFound) as e:
                await new_response(store, A, "resp_2", [msg("a")], previous_response_id="resp_x")
            assert e.value.param == "previous_response_id"
            with pytest.raises(NotFound) as e:
                await new_response(store, A, "resp_2", [msg("a")], conversation_id="conv_x")
            assert e.value.param == "conversation"
            assert await store.get_response(A, "resp_2") is None  # nothing half-created
            with pytest.raises(ValueError, match="already exists"):
                await new_response(store, A, "resp_1", [msg("a")])
            with pytest.raises(ValueError, match="duplicate item id"):
                await new_response(store, A, "resp_3", [msg("a"), msg("a")])
        finally:
            await store.close()

    run(scenario())


def test_chain_items_follow_previous_responses_oldest_first(config):
    async def scenario():
        store = await Store.open(config)
        try:
            await turn(store, A, "r1", [msg("a1")], [msg("b1", role="assistant")])
            await turn(store, A, "r2", [msg("a2")], [msg("b2", role="assistant")], previous_response_id="r1")
            await turn(store, A, "r3", [msg("a3"), msg("a3b")], [msg("b3", role="assistant")], previous_response_id="r2")
            ids = [i["id"] for i in await store.chain_items(A, "r3")]
            assert ids == ["a1", "b1", "a2", "b2", "a3", "a3b", "b3"]
            assert [i["id"] for i in await store.chain_items(A, "r1")] == ["a1", "b1"]
            with pytest.raises(NotFound):
                await store.chain_items(A, "r9")

            # A cycle can only come from a reused id: c1 → c2 → (deleted, recreated) c1.
            await turn(store, A, "c1", [msg("x1")], [])
            await turn(store, A, "c2", [msg("x2")], [], previous_response_id="c1")
            assert await store.delete_response(A, "c1")
            await turn(store, A, "c1", [msg("x1b")], [], previous_response_id="c2")
            assert [i["id"] for i in await store.chain_items(A, "c1")] == ["x2", "x1b"]
        finally:
            await store.close()

    run(scenario())


def test_owner_isolation(config):
    async def scenario():
        store = await Store.open(config)
        try:
            sha = await store.put_media(A, b"\x89PNG a's photo", "image/png")
            await turn(store, A, "resp_1", [image_msg("in_1", sha)], [msg("out_1", role="assistant")])
            await store.create_conversation(A, "conv_1", created_at=T0, metadata={}, items=[msg("c_1")])

            assert await store.get_response(B, "resp_1") is None
            assert not await store.delete_response(B, "resp_1")
            assert not await store.heartbeat(B, "resp_1", body={})
            assert not await store.finish_response(B, "resp_1", status="failed", body={}, output_items=[])
            with pytest.raises(NotFound):
                await store.input_items(B, "resp_1", limit=10, order="asc")
            with pytest.raises(NotFound):
                await store.chain_items(B, "resp_1")
            with pytest.raises(NotFound):
                await new_response(store, B, "resp_2", [msg("a")], previous_response_id="resp_1")
            with pytest.raises(NotFound):
                await new_response(store, B, "resp_2", [msg("a")], conversation_id="conv_1")
            assert await store.get_conversation(B, "conv_1") is None
            assert await store.update_conversation(B, "conv_1", {"x": "y"}) is None
            assert not await store.delete_conversation(B, "conv_1")
            with pytest.raises(NotFound):
                await store.conversation_items(B, "conv_1", limit=10, order="asc")
            with pytest.raises(NotFound):
                await store.all_conversation_items(B, "conv_1")
            with pytest.raises(NotFound):
                await store.add_conversation_items(B, "conv_1", [msg("c_2")])
            assert await store.get_conversation_item(B, "conv_1", "c_1") is None
            assert not await store.delete_conversation_item(B, "conv_1", "c_1")
            assert await store.get_media(B, sha) is None
            assert await store.sweep_stale(T0 - 1) == 0

            # B's own objects may reuse A's ids without touching A's
            await turn(store, B, "resp_1", [msg("b_in")], [])
            assert (await store.get_response(A, "resp_1")).status == "completed"
            assert [i["id"] for i in await store.chain_items(A, "resp_1")] == ["in_1", "out_1"]
            assert await store.all_conversation_items(A, "conv_1") == [msg("c_1")]
            assert await store.get_media(A, sha) == (b"\x89PNG a's photo", "image/png")
        finally:
            await store.close()

    run(scenario())


def test_delete_removes_rows_items_references_and_orphaned_media(config):
    async def scenario():
        store = await Store.open(config)
        try:
            only_response = await store.put_media(A, b"only the response", "image/png")
            shared = await store.put_media(A, b"response and conversation", "image/png")
            only_conv = await store.put_media(A, b"only the conversation", "audio/wav")
            assert media_refs(image_msg("x", shared, only_conv)) == {shared, only_conv}
            await turn(store, A, "resp_1", [image_msg("in_1", only_response, shared), msg("in_2")], [msg("out_1", role="assistant")])
            await store.create_conversation(
                A, "conv_1", created_at=T0, metadata={}, items=[image_msg("c_1", shared, only_conv), msg("c_2")]
            )
            # a turn of the conversation: its items are the conversation's once it finishes
            await turn(store, A, "resp_2", [image_msg("in_3", only_conv)], [msg("out_3", role="assistant")], conversation_id="conv_1")
            assert await count(store, "response_item_media", owner=A, response_id="resp_1") == 2

            assert await store.delete_response(A, "resp_1")
            assert not await store.delete_response(A, "resp_1")
            assert await count(store, "responses", owner=A, id="resp_1") == 0
            assert await count(store, "response_items", owner=A, response_id="resp_1") == 0
            assert await count(store, "response_item_media", owner=A, response_id="resp_1") == 0
            assert await count(store, "media", owner=A, sha256=only_response) == 0
            assert await count(store, "media", owner=A, sha256=shared) == 1  # the conversation still uses it
            assert await store.get_media(A, shared) is not None

            assert await store.delete_response(A, "resp_2")
            assert [i["id"] for i in await store.all_conversation_items(A, "conv_1")] == ["c_1", "c_2", "in_3", "out_3"]
            assert await count(store, "media", owner=A, sha256=only_conv) == 1

            await turn(store, A, "resp_3", [msg("in_4")], [], conversation_id="conv_1")
            assert await store.delete_conversation(A, "conv_1")
            assert not await store.delete_conversation(A, "conv_1")
            for table, column in (("conversations", "id"), ("conversation_items", "conversation_id"), ("conversation_item_media", "conversation_id")):
                assert await count(store, table, owner=A, **{column: "conv_1"}) == 0
            assert await count(store, "media", owner=A) == 0
            kept = await store.get_response(A, "resp_3")  # the turn's response stays, unbound
            assert kept.status == "completed" and kept.conversation_id is None

            # one item deleted: its reference and its media go, the conversation's other media stays
            m1 = await store.put_media(A, b"one", "image/png")
            m2 = await store.put_media(A, b"two", "image/png")
            await store.create_conversation(A, "conv_2", created_at=T0, metadata={}, items=[image_msg("i1", m1), image_msg("i2", m2)])
            assert await store.delete_conversation_item(A, "conv_2", "i1")
            assert not await store.delete_conversation_item(A, "conv_2", "i1")
            assert await count(store, "conversation_items", owner=A, conversation_id="conv_2") == 1
            assert await count(store, "conversation_item_media", owner=A, conversation_id="conv_2") == 1
            assert await count(store, "media", owner=A, sha256=m1) == 0
            assert await count(store, "media", owner=A, sha256=m2) == 1
        finally:
            await store.close()

    run(scenario())


def test_concurrent_turns_on_one_conversation_stay_contiguous(config):
    turns = 20

    async def scenario():
        store = await Store.open(config)
        try:
            await store.create_conversation(A, "conv_1", created_at=T0, metadata={}, items=[])
            for i in range(turns):
                await new_response(store, A, f"resp_{i}", [msg(f"in_{i}")], conversation_id="conv_1")
            finished = await asyncio.gather(
                *(
                    store.finish_response(
                        A, f"resp_{i}", status="completed", body=body(f"resp_{i}", "completed"),
                        output_items=[msg(f"out_{i}", role="assistant")],
                    )
                    for i in range(turns)
                )
            )
            assert all(finished)
            async with store.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        text("SELECT position, item_id FROM conversation_items WHERE owner = :o ORDER BY position"), {"o": A}
                    )
                ).all()
            assert [position for position, _ in rows] == list(range(2 * turns))
            ids = [item_id for _, item_id in rows]
            for k in range(0, 2 * turns, 2):
                assert ids[k].startswith("in_") and ids[k + 1] == "out_" + ids[k][3:]
            assert len(set(ids)) == 2 * turns
            assert [i["id"] for i in await store.all_conversation_items(A, "conv_1")] == ids
        finally:
            await store.close()

    run(scenario())


def test_conversation_items_api(config):
    clock = Clock()

    async def scenario():
        store = await Store.open(config, clock=clock)
        try:
            record = await store.create_conversation(A, "conv_1", created_at=T0, metadata={"topic": "parcel"}, items=[msg("m0")])
            assert (record.id, record.created_at, record.metadata) == ("conv_1", T0, {"topic": "parcel"})
            assert await store.get_conversation(A, "conv_1") == record
            assert (await store.update_conversation(A, "conv_1", {"topic": "refund"})).metadata == {"topic": "refund"}
            assert (await store.get_conversation(A, "conv_1")).metadata == {"topic": "refund"}
            with pytest.raises(ValueError, match="already exists"):
                await store.create_conversation(A, "conv_1", created_at=T0, metadata={}, items=[])

            assert await store.add_conversation_items(A, "conv_1", [msg("m1"), msg("m2")]) == [msg("m1"), msg("m2")]
            with pytest.raises(ValueError, match="already has an item with id 'm1'"):
                await store.add_conversation_items(A, "conv_1", [msg("m3"), msg("m1")])
            assert [i["id"] for i in await store.all_conversation_items(A, "conv_1")] == ["m0", "m1", "m2"]  # m3 rolled back
            assert await store.get_conversation_item(A, "conv_1", "m1") == msg("m1")
            assert await store.get_conversation_item(A, "conv_1", "m3") is None

            page = await store.conversation_items(A, "conv_1", limit=2, order="asc")
            assert ([i["id"] for i in page.items], page.has_more, page.first_id, page.last_id) == (["m0", "m1"], True, "m0", "m1")
            page = await store.conversation_items(A, "conv_1", after="m1", limit=2, order="asc")
            assert ([i["id"] for i in page.items], page.has_more) == (["m2"], False)
            page = await store.conversation_items(A, "conv_1", after="m2", limit=5, order="desc")
            assert [i["id"] for i in page.items] == ["m1", "m0"]
            with pytest.raises(NotFound) as e:
                await store.conversation_items(A, "conv_1", after="nope", limit=2, order="asc")
            assert e.value.param == "after"
            with pytest.raises(NotFound, match="No conversation found with id 'conv_x'"):
                await store.conversation_items(A, "conv_x", limit=2, order="asc")
            with pytest.raises(ValueError):
                await store.conversation_items(A, "conv_1", limit=0, order="asc")

            # A turn re-sending an item the conversation holds does not add it twice.
            await turn(store, A, "resp_1", [msg("m2"), msg("m4")], [msg("o4", role="assistant")], conversation_id="conv_1")
            assert [i["id"] for i in await store.all_conversation_items(A, "conv_1")] == ["m0", "m1", "m2", "m4", "o4"]
        finally:
            await store.close()

    run(scenario())


def test_sweep_marks_expired_leases_incomplete(config):
    clock = Clock()

    async def scenario():
        store = await Store.open(config, clock=clock)
        try:
            await new_response(store, A, "resp_old", [msg("a")])
            partial = body("resp_old", output=[msg("o", "Half an ans", role="assistant")])
            clock.now = T0 + 10
            assert await store.heartbeat(A, "resp_old", body=partial)  # lease until T0 + 40
            clock.now = T0 + 30
            await new_response(store, A, "resp_fresh", [msg("b")])  # lease until T0 + 60
            await turn(store, A, "resp_done", [msg("c")], [])

            assert await store.sweep_stale(now=T0 + 45) == 1
            old = await store.get_response(A, "resp_old")
            assert old.status == "incomplete"
            assert old.body == {**partial, "status": "incomplete", "incomplete_details": {"reason": "interrupted"}}
            assert (await store.get_response(A, "resp_fresh")).status == "in_progress"
            assert (await store.get_response(A, "resp_done")).status == "completed"
            assert not await store.finish_response(A, "resp_old", status="completed", body={}, output_items=[])
            assert await store.sweep_stale(now=T0 + 45) == 0
            clock.now = T0 + 61
            assert await store.sweep_stale() == 1  # now from the clock
        finally:
            await store.close()

    run(scenario())


def test_maintenance_loop_sweeps(config):
    clock = Clock()

    async def scenario():
        store = await Store.open(config.model_copy(update={"lease_s": 0.05}), clock=clock)
        try:
            await new_response(store, A, "resp_1", [msg("a")])
            clock.now = T0 + 1
            task = asyncio.create_task(store.run_maintenance())
            for _ in range(100):
                await asyncio.sleep(0.02)
                if (await store.get_response(A, "resp_1")).status == "incomplete":
                    break
            task.cancel()
            assert (await store.get_response(A, "resp_1")).status == "incomplete"
        finally:
            await store.close()

    run(scenario())


def test_purge_by_age_per_table(config):
    clock = Clock()
    t1 = T0 + 31 * DAY_S

    async def scenario():
        store = await Store.open(config, clock=clock)
        try:
            # the old world
            old_media = await store.put_media(A, b"old", "image/png")
            stale_media = await store.put_media(A, b"stale", "image/png")
            await turn(store, A, "resp_old", [image_msg("in", old_media)], [msg("out", role="assistant")])
            await store.create_conversation(A, "conv_old", created_at=T0, metadata={}, items=[msg("a"), msg("b")])
            year_old = t1 - 366 * DAY_S
            await store.audit(AuditEntry(at=year_old, key_id=A, route="/v1/responses", method="POST", status=200, request_id="req_old"))
            await store.audit(AuditEntry(at=T0, key_id=A, route="/v1/responses", method="POST", status=200, request_id="req_mid"))
            # the new one
            clock.now = t1 - 2 * UNREFERENCED_MEDIA_GRACE_S
            orphan = await store.put_media(A, b"never referenced", "image/png")
            clock.now = t1
            fresh_orphan = await store.put_media(A, b"not referenced yet", "image/png")
            new_media = await store.put_media(A, b"new", "image/png")
            await turn(store, A, "resp_new", [msg("in")], [msg("out", role="assistant")])
            await new_response(store, A, "resp_bound", [msg("q")], clock=clock, conversation_id="conv_old")
            await store.create_conversation(
                A, "conv_new", created_at=t1, metadata={}, items=[image_msg("n", new_media), image_msg("s", stale_media)]
            )
            await store.audit(AuditEntry(at=t1, key_id=A, route="/v1/responses", method="POST", status=200, request_id="req_new"))

            forever = await Store.open(
                config.model_copy(update={"retention_days": None, "media_retention_days": None, "audit_retention_days": None})
            )
            try:
                kept = await forever.purge(now=t1)
            finally:
                await forever.close()
            assert kept == dict.fromkeys(kept, 0) | {"media": 1}  # only the orphan past its grace

            counts = await store.purge(now=t1)
            assert counts == {
                "responses": 1, "response_items": 2, "conversations": 1, "conversation_items": 2,
                "media": 2,  # resp_old's (no longer referenced) and stale_media (unused for 31 days, though referenced)
                "audit": 1,
            }
            assert await store.get_response(A, "resp_old") is None
            assert await store.get_conversation(A, "conv_old") is None
            assert (await store.get_response(A, "resp_new")).status == "completed"
            assert (await store.get_response(A, "resp_bound")).conversation_id is None
            assert await store.get_conversation(A, "conv_new") is not None
            for sha, present in ((old_media, 0), (stale_media, 0), (orphan, 0), (fresh_orphan, 1), (new_media, 1)):
                assert await count(store, "media", owner=A, sha256=sha) == present
            assert [row.request_id for row in await store.audit_rows()] == ["req_mid", "req_new"]
            assert await count(store, "response_items", owner=A) == 3  # resp_new 2 + resp_bound 1
            assert await store.purge(now=t1) == dict.fromkeys(counts, 0)
        finally:
            await store.close()

    run(scenario())


def test_everything_committed_survives_a_restart(config):
    async def write():
        store = await Store.open(config)
        try:
            sha = await store.put_media(A, b"bytes", "audio/wav")
            await store.create_conversation(A, "conv_1", created_at=T0, metadata={"a": "b"}, items=[msg("m0")])
            await turn(store, A, "resp_1", [image_msg("in_1", sha)], [msg("out_1", role="assistant")], conversation_id="conv_1")
            await new_response(store, A, "resp_2", [msg("q")], previous_response_id="resp_1")
            await store.audit(AuditEntry(at=T0, key_id=A, route="/v1/responses", method="POST", status=200, request_id="r1"))
            return sha
        finally:
            await store.close()

    async def read(sha):
        store = await Store.open(config)
        try:
            assert (await store.get_response(A, "resp_1")).status == "completed"
            assert (await store.get_response(A, "resp_2")).status == "in_progress"
            assert [i["id"] for i in await store.chain_items(A, "resp_2")] == ["in_1", "out_1", "q"]
            assert [i["id"] for i in await store.all_conversation_items(A, "conv_1")] == ["m0", "in_1", "out_1"]
            assert (await store.get_conversation(A, "conv_1")).metadata == {"a": "b"}
            assert await store.get_media(A, sha) == (b"bytes", "audio/wav")
            assert [row.request_id for row in await store.audit_rows(key_id=A)] == ["r1"]
        finally:
            await store.close()

    sha = run(write())
    run(read(sha))


# ---- audit, media, SQLite settings, config -----------------------------------------------------


def test_audit_rows_are_redacted(config):
    async def scenario():
        store = await Store.open(config)
        try:
            await store.audit(
                AuditEntry(
                    at=T0, key_id=A, route="/v1/responses?user=jane.doe@example.com", method="POST", status=400,
                    request_id="call me on +44 20 7946 0958", prompt_tokens=12, completion_tokens=3, latency_ms=41.5,
                    flags=["injection_suspected"], response_id="resp_1",
                )
            )
            await store.audit(AuditEntry(at=T0 + 5, key_id=B, route="/v1/conversations", method="GET", status=200, request_id="req_2"))
            async with store.engine.connect() as conn:
                route, request_id = (await conn.execute(text("SELECT route, request_id FROM audit WHERE key_id = :k"), {"k": A})).one()
            assert "jane.doe" not in route and "[EMAIL]" in route
            assert "7946" not in request_id and "[PHONE]" in request_id
            (row,) = await store.audit_rows(key_id=A)
            assert (row.status, row.prompt_tokens, row.completion_tokens, row.latency_ms) == (400, 12, 3, 41.5)
            assert (row.flags, row.response_id) == (["injection_suspected"], "resp_1")
            assert [r.key_id for r in await store.audit_rows(since=T0 + 1)] == [B]
            assert len(await store.audit_rows()) == 2
        finally:
            await store.close()

    run(scenario())


def test_our_response_ids_are_kept_whole_in_the_audit(config):
    """A response id whose hex holds a 13-digit run passing Luhn was once redacted as a card number
    ('resp_61eb…bd[CARD]'), and its audit row could not be found by the id (seen in make test)."""
    looks_like_a_card = "resp_61eb61673b7140989bd5694952038854"

    async def scenario():
        store = await Store.open(config)
        try:
            await store.audit(AuditEntry(at=T0, key_id=A, route="/v1/responses", method="POST", status=200, request_id="r", response_id=looks_like_a_card))
            await store.audit(AuditEntry(at=T0, key_id=B, route="/v1/responses", method="POST", status=200, request_id="r", response_id="card 4111 1111 1111 1111"))
            assert (await store.audit_rows(key_id=A))[0].response_id == looks_like_a_card
            assert "4111" not in (await store.audit_rows(key_id=B))[0].response_id  # not ours: redacted as ever
        finally:
            await store.close()

    run(scenario())


def test_media_is_content_addressed_and_refused_without_keep_media(config):
    async def scenario():
        store = await Store.open(config)
        try:
            sha = await store.put_media(A, b"same bytes", "image/png")
            assert await store.put_media(A, b"same bytes", "image/jpeg") == sha
            assert await count(store, "media", owner=A) == 1
            assert await store.get_media(A, sha) == (b"same bytes", "image/png")
        finally:
            await store.close()
        off = await Store.open(config.model_copy(update={"keep_media": False}))
        try:
            with pytest.raises(ValueError, match="keep_media"):
                await off.put_media(A, b"a photo", "image/png")
            assert await count(off, "media", owner=A) == 1  # nothing new written
        finally:
            await off.close()

    run(scenario())


def test_sqlite_file_is_in_wal_mode(tmp_path, monkeypatch):
    monkeypatch.delenv(DSN_ENV, raising=False)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "from-env"))
    config = StoreConfig()

    async def scenario():
        store = await Store.open(config)
        try:
            async with store.engine.connect() as conn:
                assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
                assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
                assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 1  # NORMAL
        finally:
            await store.close()

    run(scenario())
    path = tmp_path / "from-env" / "chorus.db"
    with sqlite3.connect(path) as raw:  # WAL is a property of the file, not of our connections
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_config_resolves_the_url(tmp_path):
    assert StoreConfig(data_dir=str(tmp_path)).url({}) == f"sqlite+aiosqlite:///{tmp_path}/chorus.db"
    assert StoreConfig().url({DATA_DIR_ENV: str(tmp_path)}) == f"sqlite+aiosqlite:///{tmp_path}/chorus.db"
    assert StoreConfig().url({}).endswith("/.local/share/chorus/chorus.db")
    dsn = "postgresql+asyncpg://chorus@db:5432/chorus"
    assert StoreConfig(dsn=dsn).url({DSN_ENV: "ignored"}) == dsn
    assert StoreConfig().url({DSN_ENV: dsn}) == dsn
    assert StoreConfig(dsn_env="MY_DSN").url({"MY_DSN": "postgresql://u:p@h/db"}) == "postgresql+asyncpg://u:p@h/db"
    assert StoreConfig(dsn="sqlite:////tmp/x.db").url({}) == "sqlite+aiosqlite:////tmp/x.db"
    with pytest.raises(ValueError, match="extra"):
        StoreConfig(retention=3)


def test_missing_postgres_binaries_say_how_to_get_them(monkeypatch):
    from tests.helpers import postgres

    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    with pytest.raises(postgres.PostgresUnavailable, match="`make test` installs them via apt"):
        postgres.find_bindir()


def test_cancelled_writers_never_wedge_the_store(config):
    """Callers cancelled at every point of a write (begin, a statement, commit) leave no transaction
    open and no lock held: the next write goes through at once."""

    async def main():
        store = await Store.open(config)
        try:
            for i in range(40):
                task = asyncio.ensure_future(
                    store.create_response("o", f"resp_c{i}", created_at=T0, model="m", body=body(f"resp_c{i}"), input_items=[msg(f"m{i}")])
                )
                for _ in range(i % 8):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await asyncio.wait_for(
                store.create_response("o", "resp_after", created_at=T0, model="m", body=body("resp_after"), input_items=[msg("ma")]),
                timeout=10,
            )
            return await store.get_response("o", "resp_after")
        finally:
            await store.close()

    assert run(main()).status == "in_progress"


def test_many_concurrent_turns_with_reads_never_wait_on_the_pool(config):
    """60 turns at once, each reading the conversation before it writes: more transactions open than
    the SQLite worker keeps connections for must wait on the event loop, never inside the worker
    (where a waiting checkout would block the very transactions that give connections back)."""

    async def main():
        store = await Store.open(config)
        try:
            await store.create_conversation("o", "conv_busy", created_at=T0, metadata={}, items=[])

            async def turn(i: int) -> None:
                await store.get_conversation("o", "conv_busy")
                await store.all_conversation_items("o", "conv_busy")
                await store.create_response(
                    "o", f"resp_b{i}", created_at=T0, model="m", body=body(f"resp_b{i}"), input_items=[msg(f"in{i}")],
                    conversation_id="conv_busy",
                )
                await store.finish_response("o", f"resp_b{i}", status="completed", body=body(f"resp_b{i}"), output_items=[msg(f"out{i}", role="assistant")])

            await asyncio.wait_for(asyncio.gather(*(turn(i) for i in range(60))), timeout=60)  # a hang guard
            return await store.all_conversation_items("o", "conv_busy")
        finally:
            await store.close()

    items = run(main())
    assert len(items) == 120 and [i["id"][:2] for i in items[0::2]] == ["in"] * 60
