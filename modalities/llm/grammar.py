"""Constraints compiled for the decoder: llguidance matchers, one per request, from a cache by hash.

Why llguidance (measured in `bench/grammar_backends.py`, results in docs/benchmarks.md): it compiles
a JSON schema in 1-2 ms and computes a token mask in ~11 µs on SmolLM2's 49k vocabulary (next to a
~12 ms decode step either cost is noise); its Lark dialect embeds JSON schemas (`%json`), so one
grammar says "text, or a tool call whose arguments follow that tool's schema"; it names the schema
features it does not implement ("Unimplemented keys: [\"not\"]"), which becomes the 400 a client
sees; and it is a self-contained wheel (no torch, no compiler at run time). xgrammar masks faster
(~1 µs) but compiles slower (3-16 ms) and brings a second FFI runtime; outlines-core builds an
index over the whole vocabulary per schema (15-307 ms here) and has no grammar beyond regexes.

`GrammarCompiler.matcher(constraint)` compiles (or takes from its cache) and returns a fresh
matcher for one request; call it off the decode loop (the runtime does, before queueing).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

import llguidance
import llguidance.hf
import torch

from modalities.errors import InputError
from modalities.llm.constraint import Constraint
from modalities.llm.schema_bounds import Unsatisfiable, finite
from modalities.llm.tools import (
    ARGUMENTS_PREFIX,
    CALL_OPEN,
    CALL_SEPARATOR,
    CALL_SUFFIX,
    MAX_PARALLEL_CALLS,
    NAME_PREFIX,
)

CACHE_ENTRIES = 256  # compiled grammars kept (by hash): a deployment's schemas are few and reused
# Compact JSON with one space after ':' and ',' — the layout the model reads everywhere — and no
# free whitespace: a small model given free whitespace can spend its whole budget on newlines.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
INVALID_SCHEMA = "invalid_schema"
MAX_FORCED_TOKENS = 4096  # more forced tokens than any answer's budget: the schema has no finite answer
CLOSING_BIAS = 100.0  # logit bonus of a closing token in an answer's last tokens (`closing_bias`)
OUTSIDE_STRING, IN_STRING = 0, 1  # the rows of `closing_bias`


class GrammarCompiler:
    """Compiles constraints against one tokenizer; thread-safe; keeps an LRU of compiled matchers."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.vocab_size = self.tokenizer.vocab_size
        self.eos_token_id = self.tokenizer.eos_token
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.compiled = 0  # grammars compiled (cache misses), for tests and stats
        self._closing: torch.Tensor | None = None
        self.call_openers: frozenset[int] = frozenset()

    @property
    def closing_bias(self) -> torch.Tensor:
        """`[2, vocab_size]` logit biases that make a nearly spent JSON answer finish, ranking the
        tokens the grammar allows (it still decides what is allowed). Row `OUTSIDE_STRING`: a closing
        bracket or EOS first, then a comma (the next required key), then a quote (a key, or a string
        value, which closes at once) over anything that opens more. Row `IN_STRING`: the closing quote
        (there a bracket is text and would only lengthen the string), less so one that brings a comma."""
        if self._closing is None:
            bias = torch.zeros(2, self.vocab_size)
            openers = set()
            for token in range(self.vocab_size):
                text = self.tokenizer.decode_bytes([token])
                bias[OUTSIDE_STRING, token] = _outside_rank(text)
                if text[:1] == b'"':  # `",` closes the string but asks for more: less than `"` or `"}`
                    bias[IN_STRING, token] = CLOSING_BIAS / 2 if text[1:2] == b"," else CLOSING_BIAS
                elif text[:1] == b"<":
                    openers.add(token)
            bias[OUTSIDE_STRING, self.eos_token_id] = CLOSING_BIAS
            self.call_openers = frozenset(openers)  # tokens that can begin `CALL_OPEN`
            self._closing = bias
        return self._closing

    def closing_for(self, constraint: Constraint) -> torch.Tensor | None:
        """The closing bias where the constraint's structure is JSON (schemas, tool calls); None for
        regexes, choices and free grammars, whose 'closing' tokens mean nothing in particular."""
        return self.closing_bias if constraint.kind in ("json_schema", "tool_calls") else None

    def matcher(self, constraint: Constraint) -> llguidance.LLMatcher:
        """A fresh matcher for one answer; raises `InputError` (param: the constraint's) if refused."""
        with self._lock:
            pristine = self._cache.get(constraint.key)
            if pristine is not None:
                self._cache.move_to_end(constraint.key)
                return pristine.deep_copy()
        pristine = self._compile(constraint)
        with self._lock:
            self._cache[constraint.key] = pristine
            self.compiled += 1
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return pristine.deep_copy()

    def _build(self, constraint: Constraint, cap_patterns: bool) -> llguidance.LLMatcher:
        try:
            lark = to_lark(constraint, cap_patterns)
        except Unsatisfiable as e:
            raise InputError(f"{constraint.param} admits {e}", param=constraint.param, code=INVALID_SCHEMA) from e
        except (TypeError, ValueError) as e:
            raise InputError(f"invalid {constraint.kind}: {e}", param=constraint.param, code=INVALID_SCHEMA) from e
        return llguidance.LLMatcher(self.tokenizer, llguidance.LLMatcher.grammar_from_lark(lark), log_level=0)

    def _compile(self, constraint: Constraint) -> llguidance.LLMatcher:
        matcher = self._build(constraint, cap_patterns=True)
        if matcher.is_error():
            # A pattern under the length cap can be more than llguidance decides ("unable to determine
            # if regex is empty" for ^[0-9a-f]{200}$): then the patterns go uncapped, as written.
            uncapped = self._build(constraint, cap_patterns=False)
            matcher = matcher if uncapped.is_error() else uncapped
        if matcher.is_error():
            raise InputError(_explain(constraint, matcher.get_error()), param=constraint.param, code=INVALID_SCHEMA)
        # The tokens the grammar forces from the start: a schema whose recursion is required (every
        # node must have a child) forces an endless answer; llguidance gives up after 50,000 items.
        probe = matcher.deep_copy()
        if len(probe.compute_ff_tokens()) >= MAX_FORCED_TOKENS or probe.is_error():
            raise InputError(
                f"{constraint.param} admits no finite answer (a required property recurses without end)",
                param=constraint.param,
                code=INVALID_SCHEMA,
            )
        return matcher


def _outside_rank(text: bytes) -> float:
    """How much a token closes, outside a string: only brackets (`}`, `]}`): all of `CLOSING_BIAS`; a
    bracket then a comma (`},`: closes one, asks for another) or a comma alone: half; a quote (a key,
    or a string value that the in-string row then closes at once): a quarter; anything else: 0."""
    body = text.strip()
    if not body:
        return 0.0
    if body[:1] in (b"}", b"]"):
        return CLOSING_BIAS if body.strip(b"}]") == b"" else CLOSING_BIAS / 2
    if body[:1] == b",":
        return CLOSING_BIAS / 2
    return CLOSING_BIAS / 4 if body[:1] == b'"' else 0.0


def _explain(constraint: Constraint, error: str) -> str:
    """llguidance's refusal in a sentence that names the feature, without quoting the client's input."""
    unimplemented = re.search(r"Unimplemented keys: (\[[^\]]*\])", error)
    if unimplemented:
        return f"unsupported JSON Schema feature(s) in {constraint.param}: {unimplemented.group(1)}"
    # Regex errors come as "<where>: invalid regex "<the pattern>" ...", then "error: <what>".
    reasons = [line.strip()[len("error:") :].strip() for line in error.splitlines() if line.strip().startswith("error:")]
    if reasons:
        return f"{constraint.param} uses an unsupported regular expression feature: {reasons[0][:200]}"
    first = error.strip().splitlines()[0] if error.strip() else "rejected"
    return f"{constraint.param} cannot be used as a constraint: {first[:200]}"


def _json(schema: Any, cap_patterns: bool = True) -> str:
    """A schema as an llguidance `%json` body, in our JSON style (a client's own x-guidance dropped)."""
    if schema is False:
        raise Unsatisfiable("no answer (the schema is false)")
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise ValueError("a JSON Schema must be an object or a boolean")
    styled = {k: v for k, v in finite(schema, cap_patterns).items() if k != "x-guidance"}
    styled["x-guidance"] = JSON_STYLE
    return "%json " + json.dumps(styled, ensure_ascii=False)


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a Lark string literal is JSON-escaped text


def to_lark(constraint: Constraint, cap_patterns: bool = True) -> str:
    """The constraint as a Lark grammar in llguidance's dialect."""
    header = "%llguidance {}\n"
    if constraint.kind == "json_schema":
        return f"{header}start: {_json(constraint.data, cap_patterns)}\n"
    if constraint.kind == "regex":
        return header + "start: /" + llguidance.regex_to_lark(constraint.payload) + "/\n"
    if constraint.kind == "choice":
        options = constraint.data
        if not options or not all(isinstance(o, str) and o for o in options):
            raise ValueError("choices must be non-empty strings")
        return header + "start: " + " | ".join(_literal(o) for o in options) + "\n"
    if constraint.kind == "grammar":
        return constraint.payload
    if constraint.kind == "tool_calls":
        return _tool_calls_lark(constraint.data, cap_patterns)
    if constraint.kind == "no_tool_calls":
        return header + "start: TEXT\n" + _TEXT_RULE
    raise ValueError(f"unknown constraint kind {constraint.kind!r}")


# Text that never contains the call marker (llguidance regexes take `&` and `~`): the text choice of
# `auto`, and the whole answer where calls are off.
_TEXT_RULE = "TEXT: /(?s:.*)/ & ~/(?s:.*)" + CALL_OPEN + "(?s:.*)/\n"


def _tool_calls_lark(spec: dict[str, Any], cap_patterns: bool = True) -> str:
    """One or more calls (`MAX_PARALLEL_CALLS` at most; one unless parallel), each `CALL_OPEN` +
    `{"name": "<tool>", "arguments": <its schema>}` + `CALL_CLOSE`; with `auto`, plain text that never
    writes the call marker is the other choice."""
    tools = spec["tools"]
    if not tools:
        raise ValueError("no tools to call")
    rules = []
    for index, tool in enumerate(tools):
        head = _literal(CALL_OPEN + NAME_PREFIX + tool["name"] + ARGUMENTS_PREFIX)
        parameters = tool["parameters"] or {"type": "object", "properties": {}}
        rules.append(f"call_{index}: {head} {_json(parameters, cap_patterns)} {_literal(CALL_SUFFIX)}")
    repeat = f'(({_literal(CALL_SEPARATOR)}) call){{0,{MAX_PARALLEL_CALLS - 1}}}' if spec["parallel"] else ""
    start = f"calls: call {repeat}\ncall: " + " | ".join(f"call_{i}" for i in range(len(tools)))
    top = "start: calls | TEXT\n" + _TEXT_RULE if spec["mode"] == "auto" else "start: calls\n"
    return "%llguidance {}\n" + top + start + "\n" + "\n".join(rules) + "\n"
