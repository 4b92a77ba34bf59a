"""The Responses and Conversations APIs against the live app, through the official `openai` client
and plain HTTP: stored turns that build on each other, conversations, isolation between keys,
deletion down to the database rows, the audit log, and the encoder caches on a follow-up."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import API_KEY, API_KEY_B, AUTH, REPO, STORE_DIR

AUTH_B = {"Authorization": f"Bearer {API_KEY_B}"}
RECEIPT = REPO / "samples" / "images" / "receipt.jpg"
DB = Path(STORE_DIR) / "chorus.db"


def _rows(sql: str, *args) -> list[tuple]:
    with sqlite3.connect(DB) as db:
        return db.execute(sql, args).fetchall()


def _image_part() -> dict:
    return {"type": "input_image", "image_url": "data:image/jpeg;base64," + base64.b64encode(RECEIPT.read_bytes()).decode()}


@pytest.fixture(scope="module")
def client_b(serve_url):
    return openai.OpenAI(base_url=f"{serve_url}/v1", api_key=API_KEY_B, max_retries=0, timeout=120)


def test_create_retrieve_and_chain_with_the_openai_client(client):
    first = client.responses.create(model="chorus", input="My name is Ada. Where is my parcel?", max_output_tokens=8, temperature=0)
    assert first.status in ("completed", "incomplete") and first.id.startswith("resp_")
    assert first.output_text and first.usage.output_tokens > 0
    again = client.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == first.output_text and again.status == first.status

    second = client.responses.create(
        model="chorus", input="What is my name?", previous_response_id=first.id, max_output_tokens=8, temperature=0
    )
    assert second.previous_response_id == first.id
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "What is my name?"
    # the follow-up's prompt held the first turn: more prompt tokens than the follow-up alone
    alone = client.responses.create(model="chorus", input="What is my name?", max_output_tokens=8, temperature=0, store=False)
    assert second.usage.input_tokens > alone.usage.input_tokens + 10
    assert alone.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(alone.id)


def test_streaming_events_in_order(client):
    kinds, text, final = [], [], None
    # `stream()` is the SDK's helper; its get_final_response() wants response.completed, which a
    # 6-token cap may turn into response.incomplete (as OpenAI sends it): read the last event instead.
    with client.responses.stream(model="chorus", input="Say hello.", max_output_tokens=6, temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            final = getattr(event, "response", None) or final
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds and "response.output_item.done" in kinds
    assert final.output_text == "".join(text)
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text and stored.status == final.status


def test_conversation_turns_append_in_order(client):
    conv = client.conversations.create(items=[{"type": "message", "role": "user", "content": "I ordered a lamp."}], metadata={"ticket": "T-1"})
    assert conv.metadata == {"ticket": "T-1"}
    r1 = client.responses.create(model="chorus", input="Where is it?", conversation=conv.id, max_output_tokens=6, temperature=0)
    r2 = client.responses.create(model="chorus", input="Thanks.", conversation=conv.id, max_output_tokens=6, temperature=0)
    items = client.conversations.items.list(conv.id, order="asc", limit=100).data
    texts = [(i.type, getattr(i, "role", None)) for i in items]
    assert texts[0] == ("message", "user") and len(items) == 5  # seed, turn 1 in + out, turn 2 in + out
    assert [i.role for i in items] == ["user", "user", "assistant", "user", "assistant"]
    assert items[1].content[0].text == "Where is it?" and items[3].content[0].text == "Thanks."
    assert items[2].content[0].text == r1.output_text and items[4].content[0].text == r2.output_text
    # pagination: has_more, first_id/last_id, after
    page = client.conversations.items.list(conv.id, order="asc", limit=2)
    assert page.has_more and [i.id for i in page.data] == [items[0].id, items[1].id] and page.last_id == items[1].id
    rest = client.conversations.items.list(conv.id, order="asc", limit=10, after=page.last_id)
    assert [i.id for i in rest.data] == [i.id for i in items[2:]] and not rest.has_more
    newest = client.conversations.items.list(conv.id, limit=1)
    assert newest.data[0].id == items[-1].id  # desc by default
    updated = client.conversations.update(conv.id, metadata={"ticket": "T-2"})
    assert updated.metadata == {"ticket": "T-2"}
    deleted = client.conversations.delete(conv.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)


def test_unknown_ids_are_404_in_openai_shape(serve_url, client):
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nope")
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list("conv_nope")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="chorus", input="hi", previous_response_id="resp_nope")
    reply = httpx.post(f"{serve_url}/v1/responses", headers=AUTH, json={"model": "chorus", "input": "hi", "conversation": "conv_nope"})
    assert reply.status_code == 404 and reply.json()["error"]["param"] == "conversation"
    both = httpx.post(
        f"{serve_url}/v1/responses", headers=AUTH,
        json={"model": "chorus", "input": "hi", "conversation": "conv_x", "previous_response_id": "resp_x"},
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "previous_response_id"


def test_another_key_sees_nothing(client, client_b, serve_url):
    mine = client.responses.create(model="chorus", input="secret order AB123", max_output_tokens=4, temperature=0)
    conv = client.conversations.create(metadata={"k": "v"})
    for call in (
        lambda: client_b.responses.retrieve(mine.id),
        lambda: client_b.responses.input_items.list(mine.id),
        lambda: client_b.responses.delete(mine.id),
        lambda: client_b.conversations.retrieve(conv.id),
        lambda: client_b.conversations.items.list(conv.id),
        lambda: client_b.responses.create(model="chorus", input="x", previous_response_id=mine.id),
        lambda: client_b.responses.create(model="chorus", input="x", conversation=conv.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner


def test_delete_removes_rows_items_and_media(client):
    reply = client.responses.create(
        model="chorus", max_output_tokens=4, temperature=0,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Total?"}, _image_part()]}],
    )
    (stored,) = client.responses.input_items.list(reply.id).data
    assert stored.content[1].image_url.startswith("data:image/jpeg;base64,")  # given back as sent
    tables = {name for (name,) in _rows("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "media" in tables and _rows("SELECT count(*) FROM responses WHERE id = ?", reply.id) == [(1,)]
    media_before = _rows("SELECT count(*) FROM media")[0][0]
    assert media_before >= 1
    client.responses.delete(reply.id)
    assert _rows("SELECT count(*) FROM responses WHERE id = ?", reply.id) == [(0,)]
    item_tables = [t for t in tables if "item" in t]
    for table in item_tables:
        columns = [c[1] for c in _rows(f"PRAGMA table_info({table})")]
        if "response_id" in columns:
            assert _rows(f"SELECT count(*) FROM {table} WHERE response_id = ?", reply.id) == [(0,)], table
    assert _rows("SELECT count(*) FROM media")[0][0] == media_before - 1
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(reply.id)


def test_follow_up_reuses_the_encoded_image(serve_url, client):
    def ocr_cache() -> dict:
        return httpx.get(f"{serve_url}/health", timeout=30).json()["deployments"]["vision_encoder"]["ocr"]["cache"]

    first = client.responses.create(
        model="chorus", max_output_tokens=4, temperature=0,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is the TOTAL?"}, _image_part()]}],
    )
    before = ocr_cache()
    follow = client.responses.create(
        model="chorus", input="And the shop?", previous_response_id=first.id, max_output_tokens=4, temperature=0
    )
    after = ocr_cache()
    assert follow.status in ("completed", "incomplete")
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]


def test_audit_rows_have_no_content(client):
    reply = client.responses.create(model="chorus", input="Call me at ada@example.com about order AB123.", max_output_tokens=4, temperature=0)
    rows = _rows("SELECT * FROM audit WHERE response_id = ?", reply.id)
    assert len(rows) == 1
    text = " ".join(str(v) for v in rows[0])
    assert "/v1/responses" in text and "200" in text
    assert "ada@example.com" not in text and "AB123" not in text


def test_twenty_concurrent_turns_keep_each_turn_together(serve_url, client):
    conv = client.conversations.create()

    async def one(aclient, i: int):
        return await aclient.responses.create(model="chorus", input=f"turn {i}", conversation=conv.id, max_output_tokens=2, temperature=0)

    async def all_of_them():
        async with openai.AsyncOpenAI(base_url=f"{serve_url}/v1", api_key=API_KEY, max_retries=0, timeout=180) as aclient:
            return await asyncio.gather(*(one(aclient, i) for i in range(20)))

    replies = asyncio.run(all_of_them())
    items = []
    page = client.conversations.items.list(conv.id, order="asc", limit=100)
    items.extend(page.data)
    assert len(items) == 40
    by_id = {r.id: r for r in replies}
    assert len(by_id) == 20
    for user, answer in zip(items[0::2], items[1::2]):
        assert user.role == "user" and answer.role == "assistant"
    seen = sorted(int(u.content[0].text.split()[1]) for u in items[0::2])
    assert seen == list(range(20))


def test_the_conversation_sample_runs_unchanged(serve_url):
    """samples/openai_conversation.py: a voice note, a streamed photo turn and a follow-up in one
    stored conversation, through the official client as a user would run it."""
    env = {**os.environ, "CHORUS_URL": serve_url, "CHORUS_API_KEY": API_KEY}
    run = subprocess.run(
        [sys.executable, str(REPO / "samples" / "openai_conversation.py")], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "6 items stored: message/user, message/assistant, message/user, message/assistant, message/user, message/assistant" in run.stdout
    assert re.search(r"stored response: (completed|incomplete)", run.stdout), run.stdout
