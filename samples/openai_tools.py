"""Tool calls and structured answers with the official `openai` client. Run `make serve` first.

    .venv/bin/python samples/openai_tools.py

Four steps, each a function that takes a client (the integration tests run them one by one):
a forced tool call, the tool's result sent back for the final answer, a pydantic extraction with
`client.chat.completions.parse`, and a tool call streamed. Answers are grammar-constrained: a
call's arguments always follow the tool's `parameters` schema and a parsed answer always validates.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from typing import Any

from openai import OpenAI
from pydantic import BaseModel, Field

MODEL = "chorus"
SYSTEM = "You are the support assistant of an online shop. Use the tools to help the customer."
QUESTION = "Where is my order AB123456? It still has not arrived."
EMAIL = (
    "Hello, I ordered a kettle last week (order CD654321) and it arrived with a cracked lid. "
    "I would like a replacement please. Regards, Sam"
)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up an order's status and delivery date by its id.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{6}$"}},
                "required": ["order_id"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "open_return",
            "description": "Open a return for an order.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{6}$"},
                    "reason": {"type": "string", "enum": ["damaged", "wrong_item", "not_needed", "other"]},
                },
                "required": ["order_id", "reason"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "handover_to_human",
            "description": "Hand the conversation over to a human agent.",
            "parameters": {
                "type": "object",
                "properties": {"summary": {"type": "string", "maxLength": 120}},
                "required": ["summary"],
                "additionalProperties": False,
            },
        },
    },
]


class Issue(StrEnum):
    damaged = "damaged"
    late = "late"
    wrong_item = "wrong_item"
    other = "other"


class Complaint(BaseModel):
    """What the extraction step reads out of a customer's email."""

    order_id: str = Field(pattern="^[A-Z]{2}[0-9]{6}$")
    issue: Issue
    wants_replacement: bool


def make_client() -> OpenAI:
    # CHORUS_URL may be given with or without the /v1 suffix (docs/configuration.md documents it without)
    base = os.environ.get("CHORUS_URL", "http://127.0.0.1:8000/v1").rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return OpenAI(base_url=base, api_key=os.environ.get("CHORUS_API_KEY", "not-needed-locally"))


def conversation() -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


def call_a_tool(client: OpenAI) -> Any:
    """`tool_choice="required"`: the answer is a call to one of the tools, never text."""
    response = client.chat.completions.create(
        model=MODEL, messages=conversation(), tools=TOOLS, tool_choice="required", max_tokens=64, temperature=0
    )
    call = response.choices[0].message.tool_calls[0]
    print(f"tool call: {call.function.name}({call.function.arguments})  [id {call.id}]")
    return response


def answer_with_the_result(client: OpenAI, call: Any) -> str:
    """The call goes back in the history as the assistant's turn, its result as a `tool` turn."""
    result = {"order_id": "AB123456", "status": "in transit", "expected_delivery": "tomorrow"}
    messages = [
        *conversation(),
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    response = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=48, temperature=0
    )
    text = response.choices[0].message.content
    print(f"assistant: {text}")
    return text


def extract_complaint(client: OpenAI) -> Complaint:
    """A pydantic model as `response_format`: the answer follows its JSON Schema, parsed by the client."""
    response = client.chat.completions.parse(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Extract the order id, the issue and whether a replacement is wanted."},
            {"role": "user", "content": EMAIL},
        ],
        response_format=Complaint,
        max_tokens=64,
        temperature=0,
    )
    complaint = response.choices[0].message.parsed
    print(f"parsed: {complaint!r}")
    return complaint


def stream_a_tool_call(client: OpenAI) -> list[Any]:
    """A streamed call: its first delta carries id, type and name; the arguments follow in pieces."""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=conversation(),
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "lookup_order"}},
        max_tokens=64,
        temperature=0,
        stream=True,
    )
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or []:
            if delta.id:
                print(f"\n[call {delta.index}: {delta.id}] {delta.function.name}", end="")
            print(delta.function.arguments or "", end="", flush=True)
        if choice.finish_reason:
            print(f"\n[finish_reason: {choice.finish_reason}]")
    return chunks


def main() -> None:
    client = make_client()
    response = call_a_tool(client)
    answer_with_the_result(client, response.choices[0].message.tool_calls[0])
    extract_complaint(client)
    stream_a_tool_call(client)


if __name__ == "__main__":
    main()
