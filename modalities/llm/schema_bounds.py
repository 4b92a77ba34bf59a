"""A client's JSON Schema made finite before it is compiled: recursion unrolled to a depth, open strings
and arrays given a length. Every answer valid against the result is valid against the original.

Why: a small model that loses the thread inside a string, a list or a recursive structure writes
until max_tokens and leaves its JSON unfinished (invalid). The bounds keep every answer finite:

- `$ref`s to the schema's own `$defs` (or to `#`) are inlined, at most `MAX_RECURSION_DEPTH` times on
  one path; deeper, the reference becomes `false` (nothing matches), so an optional recursive property
  can no longer appear there. A schema whose recursion is *required* becomes `false` altogether: it
  has no finite answer, and is refused.
- A string without `maxLength`, `enum` or `const` gets `MAX_FREE_STRING_CHARS` (a pattern alone does
  not bound it: an email pattern let the model write a 500-token address), an array without
  `maxItems` gets `MAX_FREE_ARRAY_ITEMS`. A schema's own bounds always win. Where llguidance cannot
  decide a pattern under the cap ("unable to determine if regex is empty" for `^[0-9a-f]{200}$`),
  the grammar compiler drops the caps on patterns (`cap_patterns=False`).
"""

from __future__ import annotations

from typing import Any

MAX_FREE_STRING_CHARS = 160
MAX_FREE_ARRAY_ITEMS = 16
MAX_RECURSION_DEPTH = 4
MAX_UNROLLED_NODES = 20_000  # subschemas after inlining (a tree with several recursive children grows fast)
MAX_NESTING = 200  # subschemas inside one another, references followed (Python's recursion stays far off)

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties")
_SUBSCHEMAS = ("items", "additionalProperties", "contains", "not")
_DEFINITIONS = ("$defs", "definitions")


class Unsatisfiable(ValueError):
    """No finite JSON value satisfies the schema."""


def finite(schema: Any, cap_patterns: bool = True) -> Any:
    """`schema` unrolled and bounded; raises `Unsatisfiable`, or ValueError when unrolling grows past
    `MAX_UNROLLED_NODES` (counted as it goes: a few hundred bytes of references that fan out would
    otherwise take minutes and gigabytes) or nests past `MAX_NESTING`."""
    unroller = _Unroller(schema)
    try:
        unrolled = unroller.walk(schema, ())
    except RecursionError as e:
        raise ValueError(f"the schema nests more than {MAX_NESTING} levels") from e
    if unrolled is False:
        raise Unsatisfiable("no finite answer (a required property recurses without end)")
    return bounded(unrolled, cap_patterns)


class _Unroller:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.nodes = 0  # subschemas walked so far
        self.definitions: dict[str, Any] = {}
        if isinstance(root, dict):
            for key in _DEFINITIONS:
                if isinstance(root.get(key), dict):
                    self.definitions.update({f"#/{key}/{name}": sub for name, sub in root[key].items()})

    def _target(self, ref: str) -> Any:
        if ref == "#":
            return {k: v for k, v in self.root.items() if k not in _DEFINITIONS} if isinstance(self.root, dict) else self.root
        return self.definitions.get(ref)

    def walk(self, node: Any, path: tuple[str, ...], level: int = 0) -> Any:
        """`node` with local references inlined; `False` where nothing can match (depth spent)."""
        if not isinstance(node, dict):
            return node
        self.nodes += 1
        if self.nodes > MAX_UNROLLED_NODES:
            raise ValueError(f"the schema's references unroll past {MAX_UNROLLED_NODES} subschemas")
        if level > MAX_NESTING:
            raise ValueError(f"the schema nests more than {MAX_NESTING} levels")
        ref = node.get("$ref")
        if isinstance(ref, str) and self._target(ref) is not None:
            if path.count(ref) >= MAX_RECURSION_DEPTH:
                return False
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            target = self._target(ref)
            merged = {**target, **siblings} if isinstance(target, dict) else target
            return self.walk(merged, (*path, ref), level + 1)
        out = dict(node)  # the root keeps its $defs: a reference deeper into them stays llguidance's to resolve
        for key in _SUBSCHEMA_LISTS:
            if isinstance(out.get(key), list):
                out[key] = [self.walk(sub, path, level + 1) for sub in out[key]]
        for key in _SUBSCHEMA_MAPS:
            if isinstance(out.get(key), dict):
                out[key] = {name: self.walk(sub, path, level + 1) for name, sub in out[key].items()}
        for key in _SUBSCHEMAS:
            if isinstance(out.get(key), dict):
                out[key] = self.walk(out[key], path, level + 1)
        return False if _impossible(out) else out


def _impossible(node: dict[str, Any]) -> bool:
    """Whether a walked node can match nothing: a required property that cannot, every `anyOf`/`oneOf`
    branch that cannot, an `allOf` part that cannot, or array items that cannot while items are required."""
    properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    if any(properties.get(name) is False for name in node.get("required") or [] if isinstance(name, str)):
        return True
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key] and all(sub is False for sub in node[key]):
            return True
    if isinstance(node.get("allOf"), list) and any(sub is False for sub in node["allOf"]):
        return True
    return node.get("items") is False and _int(node.get("minItems")) > 0


def bounded(schema: Any, cap_patterns: bool = True) -> Any:
    """A copy of `schema` in which strings and arrays it leaves unbounded get `MAX_FREE_STRING_CHARS`
    and `MAX_FREE_ARRAY_ITEMS` (strings with a pattern too, unless `cap_patterns` is False)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    types = out.get("type")
    types = types if isinstance(types, list) else [types]
    open_value = not any(key in out for key in ("enum", "const"))
    uncapped = ("maxLength",) if cap_patterns else ("maxLength", "pattern")
    if "string" in types and open_value and not any(key in out for key in uncapped):
        out["maxLength"] = max(MAX_FREE_STRING_CHARS, _int(out.get("minLength")))
    if "array" in types and open_value and "maxItems" not in out:
        out["maxItems"] = max(MAX_FREE_ARRAY_ITEMS, _int(out.get("minItems")))
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [bounded(sub, cap_patterns) for sub in out[key]]
    for key in (*_SUBSCHEMA_MAPS, *_DEFINITIONS):
        if isinstance(out.get(key), dict):
            out[key] = {name: bounded(sub, cap_patterns) for name, sub in out[key].items()}
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), dict):
            out[key] = bounded(out[key], cap_patterns)
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
