"""The Responses service without Ray: a scripted decoder handle, the real chat service and a real
SQLite store in a temp dir. What is stored when a turn completes, fails mid-answer or is abandoned;
what a follow-up sends the decoder; events in OpenAI's order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve.config import ChorusConfig
from serve.errors import InvalidRequest, NotFound
from serve.protocol.responses import ResponseCreateRequest
from serve.services.chat import ChatService
from serve.services.responses import ResponsesService, StoreAccess
from serve.store import StoreConfig
from tests.helpers.scripted import ScriptedDecoder

OWNER, OTHER = "key-a", "key-b"


def _service(tmp_path, script: list[Any], finish: str = "stop", **store: Any) -> tuple[ResponsesService, ScriptedDecoder, StoreAccess]:
    config = ChorusConfig.model_validate({"store": {"data_dir": str(tmp_path), **store}})
    decoder = ScriptedDecoder(script, finish)
    access = StoreAccess(config.store)
    return ResponsesService(ChatService(config, {}, decoder), access), decoder, access


def _req(**body: Any) -> ResponseCreateRequest:
    return ResponseCreateRequest.model_validate({"model": "chorus", **body})


async def _create(svc: ResponsesService, owner: str = OWNER, **body: Any) -> dict[str, Any]:
    turn = await svc.start(_req(**body), owner)
    return await svc.complete(turn, 0.0, None, "-")


def test_a_completed_turn_is_stored_with_its_items(tmp_path):
    svc, _decoder, access = _service(tmp_path, ["Your parcel ", "is on its way."])

    async def run():
        body = await _create(svc, input="Where is my parcel?")
        stored = await svc.retrieve(OWNER, body["id"])
        items = await svc.input_items(OWNER, body["id"], None, 20, "asc")
        await access.close()
        return body, stored, items

    body, stored, items = asyncio.run(run())
    assert body["status"] == "completed" and body["store"] is True
    assert body["output"][0]["content"][0]["text"] == "Your parcel is on its way."
    assert body["usage"]["input_tokens"] == 7 and body["usage"]["output_tokens"] == 2
    assert stored == body
    assert [i["content"][0]["text"] for i in items["data"]] == ["Where is my parcel?"]


def test_a_follow_up_sends_the_earlier_turn_to_the_decoder(tmp_path):
    svc, decoder, access = _service(tmp_path, ["It left Leeds today."])

    async def run():
        first = await _create(svc, input="Where is order AB123?", instructions="Be brief.")
        await _create(svc, input="When will it arrive?", previous_response_id=first["id"])
        with pytest.raises(NotFound) as err:
            await _create(svc, OTHER, input="x", previous_response_id=first["id"])  # another key: not found
        await access.close()
        return err.value

    err = asyncio.run(run())
    texts = [[p if isinstance(p, str) else "<media>" for p in m.parts] for m in decoder.requests[1].messages]
    roles = [m.role for m in decoder.requests[1].messages]
    assert roles == ["user", "assistant", "user"]  # instructions are not carried over, as OpenAI
    assert texts[0] == ["Where is order AB123?"] and texts[1] == ["It left Leeds today."]
    assert err.param == "previous_response_id" and err.code == "not_found"


def test_a_decoder_that_dies_mid_answer_leaves_a_failed_response_with_its_text(tmp_path):
    svc, _decoder, access = _service(tmp_path, ["Your parcel ", "is ", RuntimeError("replica died")])

    async def run():
        body = await _create(svc, input="Where is my parcel?")
        stored = await svc.retrieve(OWNER, body["id"])
        await access.close()
        return body, stored

    body, stored = asyncio.run(run())
    assert body["status"] == "failed" and body["error"]["message"].startswith("internal error")
    assert stored["status"] == "failed" and stored["output"][0]["content"][0]["text"] == "Your parcel is "


def test_an_abandoned_stream_is_stored_incomplete(tmp_path):
    svc, decoder, access = _service(tmp_path, ["one ", "two ", "three ", "four"])

    async def run():
        turn = await svc.start(_req(input="Count.", stream=True), OWNER)
        events = svc.events(turn, 0.0, None, "-")
        seen = []
        async for event in events:
            seen.append(event)
            if event["type"] == "response.output_text.delta":
                break  # the client leaves after its first token
        await events.aclose()
        stored = await svc.retrieve(OWNER, turn.response_id)
        await access.close()
        return seen, stored

    seen, stored = asyncio.run(run())
    assert [e["type"] for e in seen[:2]] == ["response.created", "response.in_progress"]
    assert stored["status"] == "incomplete" and stored["incomplete_details"] == {"reason": "interrupted"}
    assert stored["output"][0]["content"][0]["text"].startswith("one ")


def test_events_follow_openai_order_and_numbering(tmp_path):
    svc, _decoder, access = _service(tmp_path, ["Hello", " there"], finish="length")

    async def run():
        turn = await svc.start(_req(input="hi", stream=True, max_output_tokens=2), OWNER)
        events = [e async for e in svc.events(turn, 0.0, None, "-")]
        await access.close()
        return events

    events = asyncio.run(run())
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.incomplete",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_store_false_and_a_disabled_store(tmp_path):
    svc, _decoder, access = _service(tmp_path, ["ok"])
    off, _d, off_access = _service(tmp_path / "off", ["ok"], enabled=False)

    async def run():
        body = await _create(svc, input="hi", store=False)
        with pytest.raises(NotFound):
            await svc.retrieve(OWNER, body["id"])
        plain = await _create(off, input="hi")  # no store: answered, not stored
        with pytest.raises(InvalidRequest) as err:
            await _create(off, input="hi", previous_response_id="resp_1")
        await access.close()
        await off_access.close()
        return body, plain, err.value

    body, plain, err = asyncio.run(run())
    assert body["store"] is False and plain["store"] is False and plain["status"] == "completed"
    assert err.code == "store_disabled"


def test_media_refused_by_the_chat_service_names_the_responses_field(tmp_path):
    svc, _decoder, access = _service(tmp_path, ["ok"])
    part = {"type": "input_image", "image_url": "data:image/png;base64,!!!"}

    async def run():
        with pytest.raises(InvalidRequest) as err:
            await _create(svc, input=[{"role": "user", "content": [{"type": "input_text", "text": "x"}, part]}])
        await access.close()
        return err.value

    err = asyncio.run(run())
    assert err.param.startswith("input.0.content.1"), err.param


def test_stored_config_is_validated():
    with pytest.raises(ValueError):
        StoreConfig.model_validate({"retention_days": -1})


def test_a_store_that_cannot_open_is_a_503_not_a_client_error(tmp_path):
    from serve.errors import Overloaded

    with pytest.raises(ValueError, match="require_dsn"):
        StoreConfig(require_dsn=True, dsn_env="CHORUS_TEST_NO_SUCH_ENV").url()
    svc, _decoder, access = _service(tmp_path, ["ok"], require_dsn=True, dsn_env="CHORUS_TEST_NO_SUCH_ENV")

    async def run():
        with pytest.raises(Overloaded) as err:
            await _create(svc, input="hi")
        health = await access.health(5.0)
        plain = await _create(svc, input="hi", store=False)  # answering needs no store
        return err.value, health, plain

    err, health, plain = asyncio.run(run())
    assert err.code == "store_unavailable" and health["status"] == "unavailable"
    assert plain["status"] == "completed"


def test_old_media_beyond_the_budget_is_replayed_as_its_text():
    from serve.services.items import MEDIA_KEY
    from serve.services.responses import within_media_budget

    def turn(i: int) -> dict[str, Any]:
        return {"id": f"msg_{i}", "type": "message", "role": "user",
                "content": [{"type": "input_image", MEDIA_KEY: f"sha{i}", "chorus_text": f"label {i}"}]}

    history = [turn(i) for i in range(5)]
    kept = within_media_budget(history, 2)
    assert [MEDIA_KEY in item["content"][0] for item in kept] == [False, False, False, True, True]
    assert kept[0]["content"][0]["media_dropped"] and kept[0]["content"][0]["chorus_text"] == "label 0"
    assert MEDIA_KEY in history[0]["content"][0]  # the stored items are not changed
    assert all(MEDIA_KEY not in item["content"][0] for item in within_media_budget(history, 0))


def test_cancel_and_delete_end_a_running_turn_cancelled(tmp_path):
    gate = asyncio.Event()  # the decoder waits there: the answer is still being written
    svc, _decoder, access = _service(tmp_path, ["one ", gate, "two "])

    async def run():
        turn = await svc.start(_req(input="Count."), OWNER)
        task = asyncio.ensure_future(svc.complete(turn, 0.0, None, "-"))
        while turn.response_id not in svc.running:  # the answer is being read
            await asyncio.sleep(0)
        cancelled = await svc.cancel(OWNER, turn.response_id)
        gate.set()
        body = await task
        stored = await svc.retrieve(OWNER, turn.response_id)
        gate.clear()
        second = await svc.start(_req(input="Count.", stream=True), OWNER)
        events = svc.events(second, 0.0, None, "-")
        first = [await events.__anext__() for _ in range(3)]
        await svc.delete(OWNER, second.response_id)
        gate.set()
        rest = [e async for e in events]
        with pytest.raises(NotFound):
            await svc.retrieve(OWNER, second.response_id)
        await access.close()
        return cancelled, body, stored, first + rest

    cancelled, body, stored, events = asyncio.run(run())
    assert cancelled["status"] == "cancelled" and body["status"] == "cancelled" and stored["status"] == "cancelled"
    assert events[-1]["type"] == "response.cancelled"
