"""The Responses API: a `ResponseCreateRequest` → a chat generation → OpenAI's Response and events.

A response is a chat turn with a memory: its context is the input, after the items of its
`previous_response_id` chain or of its `conversation`, read from the store. The turn itself runs
through the chat service (media, policy, tools, constraints are the same code), and its chunks
are read back into Responses output items and streaming events. With `store` (OpenAI's default)
the response is written when the first token is out (`in_progress`), its partial output on a
heartbeat, and its end in one transaction that also appends the turn to its conversation: a
replica that dies mid-answer leaves an `in_progress` row whose lease runs out, and the store's
sweep marks it `incomplete` with what was written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from serve.errors import InvalidRequest, NotFound, ServiceError
from serve.protocol import ChatCompletionRequest
from serve.protocol.responses import FunctionChoice, ResponseCreateRequest, new_id
from serve.redact import RedactingFilter
from serve.store import NotFound as StoreNotFound
from serve.store import Store

from .chat import DONE, ChatService, Generation
from .items import MEDIA_KEY, MEDIA_PARTS, ChatPlan, item_dicts, to_chat
from .store_access import StoreAccess

log = logging.getLogger("ray.serve.chorus.responses")
log.addFilter(RedactingFilter())
HEARTBEAT_S = 1.0  # how often a running response's partial output is written
NO_STORE = "this deployment keeps no store (store.enabled is false)"


def short(message: str, limit: int = 300) -> str:
    """A message that may quote a client's id, cut so that a huge id never makes a huge error body."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


def not_found(what: str, ident: str, param: str | None = None) -> NotFound:
    return NotFound(f"No {what} found with id '{ident[:100]}'.", param=param, code="not_found")


@dataclass
class Turn:
    """One response being made: its request, generation, and what it has produced so far."""

    req: ResponseCreateRequest
    owner: str
    generation: Generation
    response_id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    stored: bool = False
    input_items: list[dict[str, Any]] = field(default_factory=list)  # the stored form
    output: list[dict[str, Any]] = field(default_factory=list)
    status: str = "in_progress"
    error: dict[str, Any] | None = None
    incomplete: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    chorus: dict[str, Any] | None = None


class ResponsesService:
    def __init__(self, chat: ChatService, store: StoreAccess) -> None:
        self.chat = chat
        self.store = store
        self.running: dict[str, Turn] = {}  # this replica's responses in flight, for cancel

    # --- create -------------------------------------------------------------------------------

    async def start(self, req: ResponseCreateRequest, owner: str) -> Turn:
        """Check the request, gather its context, start the chat generation and wait for its
        first event (refusals raise here, before any response is stored or streamed)."""
        store = await self.store.get() if (req.store is not False or req.previous_response_id or req.conversation) else None
        history: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            try:
                history = await self._need(store, "previous_response_id").chain_items(owner, req.previous_response_id)
            except StoreNotFound as err:
                raise not_found("response", req.previous_response_id, "previous_response_id") from err
        conversation = req.conversation_id()
        if conversation is not None:
            found = await self._need(store, "conversation").get_conversation(owner, conversation)
            if found is None:
                raise not_found("conversation", conversation, "conversation")
            history = await store.all_conversation_items(owner, conversation)
        fresh = item_dicts(req.items())
        history = within_media_budget(history, self.chat.config.limits.max_media_items - count_media(fresh))
        media = await self.store.media_for(owner, history) if history else {}
        plan = to_chat(
            [*history, *fresh],
            [f"{'conversation' if conversation else 'previous_response_id'}.item.{i}" for i in range(len(history))]
            + [f"input.{i}" if not isinstance(req.input, str) else "input" for i in range(len(fresh))],
            media,
        )
        system = [{"role": "system", "content": req.instructions}] if req.instructions else []
        if system:
            plan.origins = {f"messages.{int(k.split('.')[1]) + 1}": v for k, v in plan.origins.items()}
            plan.origins["messages.0"] = "instructions"
        chat_req = self._chat_request(req, [*system, *plan.messages], plan)
        try:
            generation = await self.chat.start(chat_req, fresh_from=len(system) + len(plan.messages) - len(fresh))
            first, events = await self.chat.first_event(generation)
        except ServiceError as err:
            err.param = plan.rename(err.param)
            raise
        generation.events = events  # the first event is inside: read from it on
        # Chat field paths in the `chorus` extension, as the Responses request names them
        for flag in ((generation.chorus or {}).get("policy") or {}).get("flags", []):
            flag["where"] = plan.rename(flag["where"])
        for entry in (generation.chorus or {}).get("media", []):
            entry["param"] = plan.rename(entry["param"])
        turn = Turn(req=req, owner=owner, generation=generation)
        turn.chorus = generation.chorus
        if req.store is not False and store is not None:  # null is the default, true, as OpenAI
            turn.input_items = await self.store.stored(owner, fresh, generation.media_read)
            await store.create_response(
                owner,
                turn.response_id,
                created_at=turn.created_at,
                model=req.model,
                body=self.body(turn),
                input_items=turn.input_items,
                previous_response_id=req.previous_response_id,
                conversation_id=conversation,
            )
            turn.stored = True
        return turn

    def _need(self, store: Store | None, param: str) -> Store:
        if store is None:
            raise InvalidRequest(f"{param} needs the response store; {NO_STORE}", param=param, code="store_disabled")
        return store

    def _chat_request(self, req: ResponseCreateRequest, messages: list[dict[str, Any]], plan: ChatPlan) -> ChatCompletionRequest:
        body: dict[str, Any] = {"model": req.model, "messages": messages}
        if req.tools:
            body["tools"] = [
                {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type"})} for t in req.tools
            ]
        if req.tool_choice is not None:
            choice = req.tool_choice
            body["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}} if isinstance(choice, FunctionChoice) else choice
            )
        fmt = req.text.format if req.text else None
        if fmt is not None and fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            schema = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict, "description": fmt.description}
            body["response_format"] = {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}
        for source, target in (
            ("parallel_tool_calls", "parallel_tool_calls"),
            ("max_output_tokens", "max_completion_tokens"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("seed", "seed"),
        ):
            if getattr(req, source) is not None:
                body[target] = getattr(req, source)
        if req.chorus is not None:
            body["chorus"] = req.chorus.model_dump(exclude_none=True)
        try:
            return ChatCompletionRequest.model_validate(body)
        except ValidationError as err:
            first = err.errors()[0]
            where = plan.rename(".".join(str(p) for p in first["loc"]))
            raise InvalidRequest(f"{where}: {first['msg']}"[:300], param=where, code="invalid_value") from err

    # --- reading the answer ---------------------------------------------------------------------

    async def events(self, turn: Turn, started: float, deadline: float | None, request_id: str) -> AsyncIterator[dict[str, Any]]:
        """The Responses streaming events of `turn`, from `response.created` to its end; the turn is
        stored as it goes. A stream abandoned by its client ends the turn `incomplete`."""
        self.running[turn.response_id] = turn
        builder = _Builder(turn, self)
        last_beat = time.monotonic()
        try:
            for event in builder.opening():
                yield event
            chunks = self.chat.chunks(turn.generation, turn.generation.events, True, started, deadline, request_id)
            async for group in chunks:
                for payload in group:
                    for event in builder.read(payload):
                        yield event
                if turn.stored and time.monotonic() - last_beat > HEARTBEAT_S:
                    last_beat = time.monotonic()
                    await (await self.store.get()).heartbeat(turn.owner, turn.response_id, body=self.body(turn))
            for event in builder.closing():
                yield event
        finally:
            self.running.pop(turn.response_id, None)
            if turn.status == "in_progress":  # the client left, or we were cancelled
                turn.status = "incomplete"
                turn.incomplete = {"reason": "interrupted"}
                builder.close_items()
            if turn.stored:
                # Shielded: a cancelled stream must still write its end.
                await asyncio.shield(self._finish(turn))

    async def _finish(self, turn: Turn) -> None:
        try:
            store = await self.store.get()
            await store.finish_response(turn.owner, turn.response_id, status=turn.status, body=self.body(turn), output_items=turn.output)
        except Exception:
            log.exception("could not store the end of response %s", turn.response_id)

    async def complete(self, turn: Turn, started: float, deadline: float | None, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] | None = None
        async for event in self.events(turn, started, deadline, request_id):
            if event["type"] in ("response.completed", "response.incomplete", "response.failed", "response.cancelled"):
                body = event["response"]
        assert body is not None
        return body

    def body(self, turn: Turn) -> dict[str, Any]:
        """The Response object as it stands."""
        req = turn.req
        choice = req.tool_choice
        body: dict[str, Any] = {
            "id": turn.response_id,
            "object": "response",
            "created_at": turn.created_at,
            "status": turn.status,
            "background": False,
            "error": turn.error,
            "incomplete_details": turn.incomplete,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "metadata": req.metadata or {},
            "model": req.model,
            "output": list(turn.output),
            "parallel_tool_calls": bool(req.parallel_tool_calls),
            "previous_response_id": req.previous_response_id,
            "conversation": {"id": req.conversation_id()} if req.conversation is not None else None,
            "store": turn.stored,
            "temperature": req.temperature,
            "text": {"format": (req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else {"type": "text"})},
            "tool_choice": choice.model_dump() if isinstance(choice, FunctionChoice) else (choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "top_p": req.top_p,
            "truncation": req.truncation or "disabled",
            "usage": turn.usage,
            "user": req.user,
        }
        if turn.chorus:
            body["chorus"] = turn.chorus
        return body

    # --- stored responses ----------------------------------------------------------------------

    async def retrieve(self, owner: str, response_id: str) -> dict[str, Any]:
        store = self._need(await self.store.get(), "response_id")
        record = await store.get_response(owner, response_id)
        if record is None:
            raise not_found("response", response_id)
        return record.body

    async def delete(self, owner: str, response_id: str) -> dict[str, Any]:
        store = self._need(await self.store.get(), "response_id")
        turn = self.running.get(response_id)
        if turn is not None and turn.owner == owner:  # its stream ends `cancelled`
            turn.status, turn.incomplete = "cancelled", None
            turn.generation.cancel()
        if not await store.delete_response(owner, response_id):
            raise not_found("response", response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def cancel(self, owner: str, response_id: str) -> dict[str, Any]:
        """Stop a response still being written by this replica (its stream ends `cancelled`)."""
        store = self._need(await self.store.get(), "response_id")
        record = await store.get_response(owner, response_id)
        if record is None:
            raise not_found("response", response_id)
        turn = self.running.get(response_id)
        if turn is None or turn.owner != owner:
            raise InvalidRequest(
                f"only a response still in progress can be cancelled; this one is '{record.status}'",
                param="response_id",
                code="not_cancellable",
            )
        turn.status, turn.incomplete = "cancelled", None
        turn.generation.cancel()
        return self.body(turn)

    async def input_items(self, owner: str, response_id: str, after: str | None, limit: int, order: str) -> dict[str, Any]:
        store = self._need(await self.store.get(), "response_id")
        try:
            page = await store.input_items(owner, response_id, after=after, limit=limit, order=order)
        except StoreNotFound as err:
            raise NotFound(short(str(err)), param=err.param, code="not_found") from err
        return await self.store.page(owner, page)


def count_media(items: list[dict[str, Any]]) -> int:
    return sum(1 for i in items if isinstance(i.get("content"), list) for p in i["content"] if p.get("type") in MEDIA_PARTS)


def within_media_budget(history: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """`history` with its newest `budget` media parts as media and older ones as the text read from
    them: a long conversation keeps working under `limits.max_media_items` (and its context)."""
    out: list[dict[str, Any]] = []
    for item in reversed(history):
        content = item.get("content")
        if isinstance(content, list) and any(MEDIA_KEY in p for p in content):
            parts = []
            for part in reversed(content):
                if MEDIA_KEY in part:
                    if budget > 0:
                        budget -= 1
                    else:
                        part = {k: v for k, v in part.items() if k != MEDIA_KEY} | {"media_dropped": True}
                parts.append(part)
            item = {**item, "content": parts[::-1]}
        out.append(item)
    return out[::-1]


class _Builder:
    """Reads chat chunk payloads into Responses output items and events."""

    def __init__(self, turn: Turn, service: ResponsesService) -> None:
        self.turn, self.service = turn, service
        self.seq = 0
        self.message: dict[str, Any] | None = None  # the open message item
        self.calls: dict[int, dict[str, Any]] = {}  # tool call index → its open item
        self.finish = "stop"

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def opening(self) -> list[dict[str, Any]]:
        body = self.service.body(self.turn)
        return [self._event("response.created", response=body), self._event("response.in_progress", response=body)]

    def read(self, payload: dict[str, Any] | str) -> list[dict[str, Any]]:
        if payload == DONE or isinstance(payload, str):
            return []
        if "error" in payload and self.turn.status == "in_progress":
            self.turn.status, self.turn.error = "failed", {"code": payload["error"].get("code") or "server_error", "message": payload["error"]["message"]}
            return self.close_items()
        if payload.get("chorus"):
            self.turn.chorus = {**(self.turn.chorus or {}), **payload["chorus"]}
        if payload.get("usage"):
            u = payload["usage"]
            self.turn.usage = {
                "input_tokens": u["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": u["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u["total_tokens"],
            }
        events: list[dict[str, Any]] = []
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return events

    def _text(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self.message is None:
            self.message = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            self.turn.output.append(self.message)
            index = len(self.turn.output) - 1
            events.append(self._event("response.output_item.added", output_index=index, item=_copy(self.message)))
            part = {"type": "output_text", "text": "", "annotations": []}
            self.message["content"].append(part)
            events.append(self._event("response.content_part.added", item_id=self.message["id"], output_index=index, content_index=0, part=dict(part)))
        self.message["content"][0]["text"] += text
        index = self.turn.output.index(self.message)
        events.append(self._event("response.output_text.delta", item_id=self.message["id"], output_index=index, content_index=0, delta=text, logprobs=[]))
        return events

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        function = call.get("function") or {}
        if call.get("id"):
            events += self._close_message()
            item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress", "call_id": call["id"], "name": function.get("name"), "arguments": ""}
            self.calls[call["index"]] = item
            self.turn.output.append(item)
            events.append(self._event("response.output_item.added", output_index=len(self.turn.output) - 1, item=dict(item)))
        item = self.calls.get(call["index"])
        if item is not None and function.get("arguments"):
            item["arguments"] += function["arguments"]
            index = self.turn.output.index(item)
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=function["arguments"]))
        return events

    def _close_message(self) -> list[dict[str, Any]]:
        message, self.message = self.message, None
        if message is None:
            return []
        message["status"] = "completed" if self.turn.status != "incomplete" else "incomplete"
        index, part = self.turn.output.index(message), message["content"][0]
        return [
            self._event("response.output_text.done", item_id=message["id"], output_index=index, content_index=0, text=part["text"], logprobs=[]),
            self._event("response.content_part.done", item_id=message["id"], output_index=index, content_index=0, part=dict(part)),
            self._event("response.output_item.done", output_index=index, item=_copy(message)),
        ]

    def close_items(self) -> list[dict[str, Any]]:
        events = self._close_message()
        for item in self.calls.values():
            item["status"] = "completed"
            index = self.turn.output.index(item)
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index, arguments=item["arguments"]))
            events.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        self.calls = {}
        return events

    def closing(self) -> list[dict[str, Any]]:
        turn = self.turn
        if turn.status == "in_progress":
            if self.finish == "length":
                turn.status, turn.incomplete = "incomplete", {"reason": "max_output_tokens"}
            elif self.finish == "content_filter":
                turn.status, turn.incomplete = "incomplete", {"reason": "content_filter"}
                if not turn.req.stream and self.message is not None and turn.generation.guard is not None:
                    # Nothing has left yet: the answer is the refusal alone, as a chat completion's is.
                    self.message["content"][0]["text"] = turn.generation.guard.refusal
            else:
                turn.status = "completed"
        events = self.close_items()
        kind = {"completed": "response.completed", "failed": "response.failed", "cancelled": "response.cancelled"}.get(turn.status, "response.incomplete")
        return [*events, self._event(kind, response=self.service.body(turn))]


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "content": [dict(p) for p in item.get("content", [])]}


__all__ = ["ResponsesService", "StoreAccess", "Turn"]
