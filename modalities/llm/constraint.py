"""What a constrained answer must look like, as plain data (torch-free, grammar-library-free).

A `Constraint` travels with `SamplingParams` from the ingress to the decoder; there
`modalities.llm.grammar` compiles it (llguidance) into a matcher that masks every token the answer
could not continue with. Kinds:

- `json_schema`: the answer is one JSON value valid against the schema (`json_object`: any object);
- `regex`: the whole answer matches the regular expression;
- `choice`: the answer is exactly one of the strings;
- `grammar`: a Lark grammar in llguidance's dialect (`chorus.grammar`);
- `no_tool_calls`: plain text that never writes a call (tools offered with `tool_choice: none`, or a
  history with calls in it: a small model imitates the markup it sees);
- `tool_calls`: the answer is one or more tool calls in `modalities.llm.tools`' format, each naming
  one of the tools and carrying arguments valid against its parameters schema; with `auto`, plain
  text (never containing the call marker) is allowed instead, and a call is constrained once it starts.

`param` names the request field the constraint came from, so a schema the compiler refuses is
reported against it (400 with `param`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ConstraintKind = Literal["json_schema", "regex", "choice", "grammar", "tool_calls", "no_tool_calls"]
ToolMode = Literal["required", "auto"]


@dataclass(frozen=True)
class Constraint:
    kind: ConstraintKind
    payload: str  # canonical JSON (schemas, choices, tool specs) or the grammar/regex text
    param: str = "response_format"
    key: str = field(init=False)  # identifies the compiled grammar: the cache key

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"{self.kind}\0{self.payload}".encode()).hexdigest()
        object.__setattr__(self, "key", digest)

    @property
    def structured(self) -> bool:
        """Whether the answer has a shape a stop string would cut (all but `no_tool_calls`' text)."""
        return self.kind != "no_tool_calls"

    @property
    def data(self) -> Any:
        """The payload decoded (JSON kinds); the text itself for `regex` and `grammar`."""
        return self.payload if self.kind in ("regex", "grammar") else json.loads(self.payload)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def json_schema(schema: dict[str, Any], param: str = "response_format.json_schema.schema") -> Constraint:
    return Constraint("json_schema", _canonical(schema), param)


def json_object(param: str = "response_format") -> Constraint:
    return Constraint("json_schema", _canonical({"type": "object"}), param)


def regex(pattern: str, param: str = "chorus.regex") -> Constraint:
    return Constraint("regex", pattern, param)


def choice(options: Sequence[str], param: str = "chorus.choice") -> Constraint:
    return Constraint("choice", _canonical(list(options)), param)


def grammar(lark: str, param: str = "chorus.grammar") -> Constraint:
    return Constraint("grammar", lark, param)


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: its name and its arguments' JSON Schema."""

    name: str
    parameters: dict[str, Any]


def tool_calls(tools: Sequence[ToolSpec], mode: ToolMode, parallel: bool, param: str = "tools") -> Constraint:
    """Calls to `tools` (a named `tool_choice` passes just that tool with mode `required`)."""
    payload = {"mode": mode, "parallel": parallel, "tools": [{"name": t.name, "parameters": t.parameters} for t in tools]}
    return Constraint("tool_calls", _canonical(payload), param)


def no_tool_calls(param: str = "tool_choice") -> Constraint:
    return Constraint("no_tool_calls", "", param)
