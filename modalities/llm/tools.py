"""The tool-call format: how tools are described to the model, how its calls look, how they are read back.

One generic format for every model (SmolLM2's chat template has no tool support; llama.cpp's server
falls back to a "generic" format for it too). It is the Hermes layout that Qwen, Hermes and SmolLM3
were trained on, rendered as text, so any template carries it:

    <tool_call>{"name": "lookup_order", "arguments": {"order_id": "AB123456"}}</tool_call>

The tools are listed in the system message between <tools></tools>, one JSON object per line; past
calls are rendered in the assistant's turn in the same layout, and tool results go back as `tool`
turns. The grammar (`modalities.llm.grammar`) produces exactly this layout, so `ToolCallParser` can
read calls incrementally, while they stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
CALL_SEPARATOR = "\n"  # between parallel calls
MAX_PARALLEL_CALLS = 8  # calls in one answer (the grammar's bound)
NAME_PREFIX = '{"name": "'
ARGUMENTS_PREFIX = '", "arguments": '
CALL_SUFFIX = "}" + CALL_CLOSE  # closes the call object, then the block

TOOLS_INTRO = "You can call functions to help the user. The functions you can call:\n<tools>\n"
TOOLS_OUTRO = (
    "\n</tools>\nTo call a function, answer with "
    + CALL_OPEN
    + '{"name": <function name>, "arguments": <arguments as a JSON object>}'
    + CALL_CLOSE
    + ". Otherwise answer the user in plain text."
)


def describe_tools(tools: Sequence[dict[str, Any]]) -> str:
    """The tools as the system message lists them: `{"name", "description", "parameters"}` per line."""
    lines = []
    for tool in tools:
        entry = {"name": tool["name"]}
        if tool.get("description"):
            entry["description"] = tool["description"]
        entry["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        lines.append(json.dumps(entry, ensure_ascii=False))
    return "\n".join(lines)


def render_call(name: str, arguments: str) -> str:
    """One call as the model writes it; `arguments` is the JSON text the client sent back."""
    try:
        compact = json.dumps(json.loads(arguments), ensure_ascii=False)
    except (TypeError, ValueError):
        compact = json.dumps(arguments, ensure_ascii=False)  # not JSON: kept, as a string value
    return f"{CALL_OPEN}{NAME_PREFIX}{name}{ARGUMENTS_PREFIX}{compact}{CALL_SUFFIX}"


@dataclass
class CallDelta:
    """What one push added to call `index`: its name (once, when first known) and arguments text."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass
class ToolCallParser:
    """Reads an answer in this format as it streams: text, or calls with their arguments in pieces.

    Text that could still become `CALL_OPEN` is held back until it can't; a call's arguments are
    released as they come, less the tail that could be the call's closing `}</tool_call>`. The
    answer's grammar guarantees the layout; a text answer (which never writes `CALL_OPEN`) is text.
    """

    text_mode: bool | None = None  # None: undecided (the answer so far is a prefix of CALL_OPEN)
    calls: list[dict[str, str]] = field(default_factory=list)  # {"name", "arguments"} per call
    _buffer: str = ""
    _released: int = 0  # chars of the current call's arguments already released

    def push(self, text: str) -> tuple[str, list[CallDelta]]:
        """Add answer text; returns (text to release, call deltas)."""
        self._buffer += text
        if self.text_mode is None:
            if CALL_OPEN.startswith(self._buffer):
                return "", []
            self.text_mode = not self._buffer.startswith(CALL_OPEN)
        if self.text_mode:
            released, self._buffer = self._buffer, ""
            return released, []
        return "", self._calls(final=False)

    def finish(self) -> tuple[str, list[CallDelta]]:
        """The answer has ended: release what was held (a text answer's held prefix, a call's tail)."""
        if self.text_mode is None or self.text_mode:
            released, self._buffer = self._buffer, ""
            self.text_mode = True if self.text_mode is None and not released.startswith(CALL_OPEN) else self.text_mode
            return released, []
        return "", self._calls(final=True)

    def _calls(self, final: bool) -> list[CallDelta]:
        deltas: list[CallDelta] = []
        while True:
            index = len(self.calls) - 1
            current = self.calls[-1] if self.calls and "done" not in self.calls[-1] else None
            if current is None:
                start = self._buffer.find(CALL_OPEN)
                if start < 0:
                    return deltas
                head = self._buffer[start + len(CALL_OPEN) :]
                if not head.startswith(NAME_PREFIX) or ARGUMENTS_PREFIX not in head:
                    return deltas
                name_end = head.index(ARGUMENTS_PREFIX)
                name = head[len(NAME_PREFIX) : name_end]
                self.calls.append({"name": name, "arguments": ""})
                self._buffer = head[name_end + len(ARGUMENTS_PREFIX) :]
                self._released = 0
                deltas.append(CallDelta(len(self.calls) - 1, name=name))
                continue
            end = _call_end(self._buffer)
            if end >= 0:
                arguments = self._buffer[:end]
                self._buffer = self._buffer[end + len(CALL_SUFFIX) :]
                current["done"] = "1"
            elif final:
                arguments = self._buffer  # cut short (max_tokens): what there is
                self._buffer = ""
                current["done"] = "1"
            else:
                arguments = self._buffer[: max(self._released, len(self._buffer) - len(CALL_SUFFIX))]
            piece = arguments[self._released :]
            self._released = len(arguments)
            current["arguments"] = arguments
            if piece:
                _add(deltas, index, piece)
            if "done" not in current:
                return deltas

    def tool_calls(self) -> list[dict[str, str]]:
        """Every call read: `{"name", "arguments"}` (arguments as JSON text)."""
        return [{"name": c["name"], "arguments": c["arguments"]} for c in self.calls]


def _add(deltas: list[CallDelta], index: int, piece: str) -> None:
    if deltas and deltas[-1].index == index:
        deltas[-1].arguments += piece
    else:
        deltas.append(CallDelta(index, arguments=piece))


def _call_end(buffer: str) -> int:
    """Where the call's closing `}</tool_call>` starts in `buffer` (the arguments before it complete
    JSON: one inside an argument string does not count), or -1."""
    end = buffer.find(CALL_SUFFIX)
    while end >= 0 and not _balanced(buffer[:end]):
        end = buffer.find(CALL_SUFFIX, end + 1)
    return end


def _balanced(text: str) -> bool:
    """Whether `text` is a complete JSON value as far as braces outside strings go (so a
    `}</tool_call>` inside an argument string is not taken for the call's end)."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
    return depth == 0 and not in_string
