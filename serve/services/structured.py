"""Tools and structured answers for the chat service: the request's constraint, the conversation
with its tools and past calls rendered in, and the answer read back as text or tool calls.

The format (how tools are shown to the model, how a call is written) is `modalities.llm.tools`';
the grammar that makes the answer follow it is `modalities.llm.grammar`'s, in the decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fusion.prompt import Message
from modalities.llm import constraint as constraints
from modalities.llm.constraint import Constraint
from modalities.llm.tools import TOOLS_INTRO, TOOLS_OUTRO, CallDelta, ToolCallParser, describe_tools, render_call
from serve.errors import InvalidRequest
from serve.protocol import (
    ChatCompletionRequest,
    DeltaFunctionCall,
    DeltaToolCall,
    NamedToolChoice,
    ResponseFunctionCall,
    ResponseToolCall,
    new_tool_call_id,
)


def constraint_for(req: ChatCompletionRequest) -> Constraint | None:
    """The grammar the answer must follow, from `tools`/`tool_choice`, `response_format` or `chorus`."""
    fields = req.constraint_fields()
    if len(fields) > 1:
        raise InvalidRequest(
            f"only one of tools, a JSON response_format, chorus.regex, chorus.choice and chorus.grammar can shape an "
            f"answer; this request sets {', '.join(fields)}",
            param=fields[1],
            code="conflicting_constraints",
        )
    if not fields:
        # Tools offered with tool_choice "none", or calls in the history: the answer is text, and a
        # small model that saw the call markup would otherwise write it (it is the service's own).
        has_calls = any(m.tool_calls for m in req.messages)
        return constraints.no_tool_calls() if req.tools or has_calls else None
    if fields[0] == "tools":
        return _tools_constraint(req)
    if fields[0] == "response_format":
        fmt = req.response_format
        if fmt.type == "json_object":
            return constraints.json_object()
        return constraints.json_schema(fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {})
    chorus = req.chorus
    if chorus.regex is not None:
        return constraints.regex(chorus.regex)
    if chorus.choice is not None:
        if any(not option for option in chorus.choice):
            raise InvalidRequest("choices must be non-empty strings", param="chorus.choice", code="invalid_value")
        return constraints.choice(chorus.choice)
    return constraints.grammar(chorus.grammar)


def _tools_constraint(req: ChatCompletionRequest) -> Constraint:
    tools = [t.function for t in req.tools or []]
    choice = req.tool_choice or "auto"  # OpenAI's default when tools are given
    if isinstance(choice, NamedToolChoice):
        tools = [t for t in tools if t.name == choice.function.name]
    specs = [constraints.ToolSpec(t.name, t.parameters or {"type": "object", "properties": {}}) for t in tools]
    mode = "auto" if choice == "auto" else "required"
    # Opt-in, as llama.cpp's server has it (OpenAI's default is on): a small model offered another
    # call after each one keeps calling until max_tokens cuts the last call short.
    parallel = bool(req.parallel_tool_calls)
    return constraints.tool_calls(specs, mode, parallel)


def render_conversation(messages: list[Message], req: ChatCompletionRequest) -> list[Message]:
    """`messages` (one per request message) with the tools listed in the system message and past
    tool calls written into their assistant turns; tool results stay `tool` turns. Everything the
    client wrote stays literal text (`fusion.prompt`): a tool result cannot forge template tokens."""
    rendered: list[Message] = []
    for message, original in zip(messages, req.messages, strict=True):
        if original.tool_calls:
            calls = [render_call(c.function.name, c.function.arguments) for c in original.tool_calls]
            message = Message(message.role, [*message.parts, *calls])
        rendered.append(message)
    if not req.tools_in_use():
        return rendered
    listing = TOOLS_INTRO + describe_tools([t.function.model_dump(exclude_none=True) for t in req.tools]) + TOOLS_OUTRO
    if rendered and rendered[0].role == "system":
        return [Message("system", [*rendered[0].parts, "\n\n" + listing]), *rendered[1:]]
    return [Message("system", [listing]), *rendered]


@dataclass
class AnswerReader:
    """Reads a tool-shaped answer as it streams: text deltas, or tool-call deltas in OpenAI's chunk
    shape (the first delta of a call carries its id, type and name; then arguments in pieces)."""

    parser: ToolCallParser = field(default_factory=ToolCallParser)
    ids: list[str] = field(default_factory=list)

    def push(self, text: str) -> tuple[str, list[DeltaToolCall]]:
        released, deltas = self.parser.push(text)
        return released, self._deltas(deltas)

    def finish(self) -> tuple[str, list[DeltaToolCall]]:
        released, deltas = self.parser.finish()
        return released, self._deltas(deltas)

    def _deltas(self, deltas: list[CallDelta]) -> list[DeltaToolCall]:
        out: list[DeltaToolCall] = []
        for delta in deltas:
            if delta.name is not None:
                self.ids.append(new_tool_call_id())
                function = DeltaFunctionCall(name=delta.name, arguments=delta.arguments)
                out.append(DeltaToolCall(index=delta.index, id=self.ids[delta.index], type="function", function=function))
            else:
                out.append(DeltaToolCall(index=delta.index, function=DeltaFunctionCall(arguments=delta.arguments)))
        return out

    def tool_calls(self) -> list[ResponseToolCall]:
        return [
            ResponseToolCall(id=call_id, function=ResponseFunctionCall(name=call["name"], arguments=call["arguments"]))
            for call_id, call in zip(self.ids, self.parser.tool_calls())
        ]


def delta_dicts(calls: list[DeltaToolCall]) -> list[dict[str, Any]]:
    """Tool-call deltas as OpenAI sends them: only the fields that are set."""
    return [json.loads(call.model_dump_json(exclude_none=True)) for call in calls]
