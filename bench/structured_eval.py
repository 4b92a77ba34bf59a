"""Held-out evaluation of tool calls and structured outputs through the live Chat Completions API.

On bench/data/structured_heldout.json (a customer-service tool set and extraction tasks written as
an integrator would, never tuned to the model) it measures:

- tool calls, `tool_choice="required"` (and `"auto"` as a second, reported-only column): every
  returned call names one of the tools and its `arguments` parse as JSON and validate (JSON Schema
  Draft 2020-12) against that tool's `parameters`; the first call is the expected tool; its
  arguments match the expected values (strings case-insensitively after stripping, numbers by
  value, lists as sets), as the mean fraction of expected keys right and as all keys right;
- extraction, `response_format` `json_schema` (strict): the content parses and validates against
  the case's schema; expected fields right (over all expected fields of all cases); the same
  prompts with `json_object`: the content parses as a JSON object;
- concurrency: 8 extraction cases with 8 different schemas sent at once, streamed, each answer
  reassembled from its deltas and validated.

Requests are greedy (temperature 0), through the official `openai` client; finish_reason, completion
tokens and latency are kept per case; a malformed answer or an HTTP error counts as invalid (text kept).

    python -m bench.structured_eval [--base-url http://127.0.0.1:8000] [--out FILE] [--max-tokens N]

Without --base-url it starts deploy/local.yaml's app in this process on a free port (bench.service)
and stops it at the end. Writes --out (default bench/results/structured/eval.json), report.md beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from openai import OpenAI

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data" / "structured_heldout.json"
DEFAULT_OUT = REPO / "bench" / "results" / "structured" / "eval.json"
MODEL = "chorus"
CONCURRENT = 8
REQUEST_TIMEOUT_S = 600


def check(text: str | None, schema: dict) -> tuple[Any, bool, str | None]:
    """(parsed value or None, valid, why not) for a model's JSON text against `schema`."""
    try:
        value = json.loads(text or "")
    except (ValueError, RecursionError) as e:
        return None, False, f"not JSON: {e}"
    error = best_match(Draft202012Validator(schema).iter_errors(value))
    return value, error is None, None if error is None else f"schema: {error.message[:300]} at {list(error.absolute_path)}"


def _norm(value: Any) -> str:
    return str(value).strip().casefold()


def matches(got: Any, want: Any) -> bool:
    """One expected value: strings case-insensitively after stripping, numbers by value, lists as sets."""
    if want is None or isinstance(want, bool):
        return got is want
    if isinstance(want, int | float):
        return isinstance(got, int | float) and not isinstance(got, bool) and float(got) == float(want)
    if isinstance(want, str):
        return isinstance(got, str) and _norm(got) == _norm(want)
    if isinstance(want, list):
        return isinstance(got, list) and {_norm(v) for v in got} == {_norm(v) for v in want}
    return got == want


def score_fields(got: Any, expected: dict) -> dict:
    """Per expected key whether `got` (a parsed object, or anything else: all wrong) has it right."""
    per_key = {key: isinstance(got, dict) and key in got and matches(got[key], want) for key, want in expected.items()}
    right = sum(per_key.values())
    return {"per_key": per_key, "right": right, "of": len(expected),
            "fraction": right / len(expected) if expected else 1.0, "all_right": right == len(expected)}


def _create(client: OpenAI, **kwargs: Any) -> tuple[Any, dict]:
    """(response or None, its finish_reason / completion tokens / latency / error)."""
    start = time.perf_counter()
    resp, error = None, None
    try:
        resp = client.chat.completions.create(model=MODEL, temperature=0, **kwargs)
    except Exception as e:  # an HTTP error or a body the SDK can't read: this case fails, the run goes on
        error = f"{type(e).__name__}: {str(e)[:500]}"
    usage = getattr(resp, "usage", None)
    return resp, {"finish_reason": resp.choices[0].finish_reason if resp and resp.choices else None,
                  "completion_tokens": getattr(usage, "completion_tokens", None),
                  "latency_s": round(time.perf_counter() - start, 3), "error": error}


def run_tool_case(client: OpenAI, case: dict, tools: list[dict], tool_choice: str, max_tokens: int) -> dict:
    params = {tool["function"]["name"]: tool["function"]["parameters"] for tool in tools}
    resp, meta = _create(client, messages=case["messages"], tools=tools, tool_choice=tool_choice, max_tokens=max_tokens)
    message = resp.choices[0].message if resp is not None and resp.choices else None
    calls = []
    for call in (getattr(message, "tool_calls", None) or []):
        function = getattr(call, "function", None)
        name, text = getattr(function, "name", None), getattr(function, "arguments", None)
        value, valid, problem = check(text, params[name]) if name in params else (None, False, f"unknown tool {name!r}")
        calls.append({"name": name, "arguments": text, "parsed": value, "valid": valid, "problem": problem})
    right_tool = bool(calls) and calls[0]["name"] == case["expected_tool"]
    args = score_fields(calls[0]["parsed"] if right_tool else None, case["expected_arguments"])
    valid = meta["error"] is None and all(c["valid"] for c in calls) and (bool(calls) or tool_choice != "required")
    return {"id": case["id"], "tool_choice": tool_choice, "expected_tool": case["expected_tool"], "valid": valid,
            "called_tool": bool(calls), "right_tool": right_tool, "arguments_fraction": args["fraction"],
            "arguments_all_right": args["all_right"], "arguments_per_key": args["per_key"], "calls": calls,
            "content": getattr(message, "content", None), **meta}


def _content(resp: Any) -> str | None:
    return resp.choices[0].message.content if resp is not None and resp.choices else None


def schema_format(case: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": case["name"], "schema": case["schema"], "strict": True}}


def _extraction_row(case: dict, content: str | None, meta: dict) -> dict:
    value, valid, problem = check(content, case["schema"])
    fields = score_fields(value, case["expected"])
    return {"id": case["id"], "valid": valid and meta["error"] is None, "problem": problem,
            "fields_right": fields["right"], "fields_of": fields["of"], "per_field": fields["per_key"],
            "content": content, **meta}


def run_extraction(client: OpenAI, case: dict, max_tokens: int) -> dict:
    resp, meta = _create(client, messages=case["messages"], response_format=schema_format(case), max_tokens=max_tokens)
    return _extraction_row(case, _content(resp), meta)


def run_json_object(client: OpenAI, case: dict, max_tokens: int) -> dict:
    resp, meta = _create(client, messages=case["messages"], response_format={"type": "json_object"}, max_tokens=max_tokens)
    content = _content(resp)
    try:
        is_object = isinstance(json.loads(content or ""), dict)
    except (ValueError, RecursionError):
        is_object = False
    return {"id": case["id"], "json_object": is_object and meta["error"] is None, "content": content, **meta}


def run_streamed(client: OpenAI, case: dict, max_tokens: int) -> dict:
    """One json_schema extraction streamed; the content reassembled from the deltas."""
    start = time.perf_counter()
    parts: list[str] = []
    meta: dict[str, Any] = {"finish_reason": None, "completion_tokens": None, "error": None}
    try:
        stream = client.chat.completions.create(
            model=MODEL, temperature=0, messages=case["messages"], response_format=schema_format(case),
            max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.usage is not None:
                meta["completion_tokens"] = chunk.usage.completion_tokens
            for choice in chunk.choices:
                parts.append((choice.delta.content if choice.delta else None) or "")
                meta["finish_reason"] = choice.finish_reason or meta["finish_reason"]
    except Exception as e:  # as in _create: the case fails, the run goes on
        meta["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    meta["latency_s"] = round(time.perf_counter() - start, 3)
    return _extraction_row(case, "".join(parts), meta)


def run_concurrent(client: OpenAI, cases: list[dict], max_tokens: int) -> dict:
    chosen = [c for i, c in enumerate(cases) if c["name"] not in {d["name"] for d in cases[:i]}][:CONCURRENT]
    if len(chosen) < CONCURRENT:
        raise ValueError(f"the concurrency check needs {CONCURRENT} extraction cases with different schemas")
    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        rows = list(pool.map(lambda case: run_streamed(client, case, max_tokens), chosen))
    return {"requests": CONCURRENT, "wall_s": round(time.perf_counter() - start, 3),
            "valid": sum(r["valid"] for r in rows), "all_valid": all(r["valid"] for r in rows), "cases": rows}


def _pct(flags: list) -> float | None:  # share of true flags, in %
    return round(100 * sum(flags) / len(flags), 1) if flags else None


def _timing(rows: list[dict]) -> dict:
    tokens = [r["completion_tokens"] for r in rows if r["completion_tokens"] is not None]
    return {"errors": sum(r["error"] is not None for r in rows),
            "finish_reasons": dict(Counter(str(r["finish_reason"]) for r in rows)),
            "median_latency_s": round(statistics.median(r["latency_s"] for r in rows), 3) if rows else None,
            "mean_completion_tokens": round(statistics.mean(tokens), 1) if tokens else None}


def summarize_tools(rows: list[dict]) -> dict:
    return {"cases": len(rows), "valid_pct": _pct([r["valid"] for r in rows]),
            "called_tool_pct": _pct([r["called_tool"] for r in rows]),
            "right_tool_pct": _pct([r["right_tool"] for r in rows]),
            "arguments_key_pct": round(100 * statistics.mean(r["arguments_fraction"] for r in rows), 1) if rows else None,
            "arguments_all_right_pct": _pct([r["arguments_all_right"] for r in rows]), **_timing(rows)}


def summarize_extraction(rows: list[dict], json_rows: list[dict]) -> dict:
    of = sum(r["fields_of"] for r in rows)
    return {"cases": len(rows), "valid_pct": _pct([r["valid"] for r in rows]),
            "field_accuracy_pct": round(100 * sum(r["fields_right"] for r in rows) / of, 1) if of else None,
            "all_fields_right_pct": _pct([r["fields_right"] == r["fields_of"] for r in rows]),
            "json_object_pct": _pct([r["json_object"] for r in json_rows]), **_timing(rows)}


def summary_table(summary: dict) -> str:
    req, auto, ext, conc = summary["tools_required"], summary["tools_auto"], summary["extraction"], summary["concurrent"]
    rows = [("tool calls valid", req["valid_pct"], auto["valid_pct"]),
            ("called a tool", req["called_tool_pct"], auto["called_tool_pct"]),
            ("right tool", req["right_tool_pct"], auto["right_tool_pct"]),
            ("right arguments, mean per-key fraction", req["arguments_key_pct"], auto["arguments_key_pct"]),
            ("right arguments, all keys", req["arguments_all_right_pct"], auto["arguments_all_right_pct"])]
    lines = ["| figure | tool_choice=required | tool_choice=auto |", "|---|---:|---:|"]
    lines += [f"| {name} | {a} % | {b} % |" for name, a, b in rows]
    lines += ["", "| figure | value |", "|---|---:|",
              f"| extraction valid (json_schema, strict) | {ext['valid_pct']} % |",
              f"| extraction field accuracy | {ext['field_accuracy_pct']} % |",
              f"| extraction all fields right | {ext['all_fields_right_pct']} % |",
              f"| json_object parses as an object | {ext['json_object_pct']} % |",
              f"| {conc['requests']} concurrent streamed, different schemas, all valid | "
              f"{'yes' if conc['all_valid'] else 'no'} ({conc['valid']}/{conc['requests']}) |"]
    return "\n".join(lines)


def report_md(results: dict) -> str:
    s = results["summary"]
    lines = ["# Structured outputs and tool calls: held-out evaluation", "",
             f"{results['base_url']}, model `{MODEL}`, temperature 0, max_tokens {results['max_tokens']}; "
             f"{s['tools_required']['cases']} tool cases, {s['extraction']['cases']} extraction cases "
             f"(`python -m bench.structured_eval`, data bench/data/structured_heldout.json).", "",
             summary_table(s), "", "## Tool cases", "",
             "| case | expected | required: got, valid, args | auto: got, valid, args | finish (required) |",
             "|---|---|---|---|---|"]
    for req, auto in zip(results["tools_required"], results["tools_auto"]):
        got = [", ".join(c["name"] or "?" for c in r["calls"]) or "-" for r in (req, auto)]
        lines.append(f"| {req['id']} | {req['expected_tool']} | {got[0]}, {'✓' if req['valid'] else '✗'}, "
                     f"{req['arguments_fraction']:.2f} | {got[1]}, {'✓' if auto['valid'] else '✗'}, "
                     f"{auto['arguments_fraction']:.2f} | {req['finish_reason']} |")
    lines += ["", "## Extraction cases", "", "| case | valid | fields right | json_object | finish | problem |",
              "|---|---|---|---|---|---|"]
    for row, obj in zip(results["extraction"], results["json_object"]):
        problem = (row["error"] or row["problem"] or "").replace("|", "/").replace("\n", " ")[:120]
        lines.append(f"| {row['id']} | {'✓' if row['valid'] else '✗'} | {row['fields_right']}/{row['fields_of']} | "
                     f"{'✓' if obj['json_object'] else '✗'} | {row['finish_reason']} | {problem} |")
    return "\n".join(lines) + "\n"


def evaluate(base: str, data: dict, max_tokens: int) -> dict:
    client = OpenAI(base_url=f"{base}/v1", api_key="not-needed", timeout=REQUEST_TIMEOUT_S, max_retries=0)
    tools = data["tools"]
    results: dict[str, Any] = {"base_url": base, "max_tokens": max_tokens, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    for choice in ("required", "auto"):
        print(f"tool cases, tool_choice={choice} ...", flush=True)
        results[f"tools_{choice}"] = [run_tool_case(client, c, tools, choice, max_tokens) for c in data["tool_cases"]]
    print("extraction cases ...", flush=True)
    results["extraction"] = [run_extraction(client, c, max_tokens) for c in data["extraction_cases"]]
    results["json_object"] = [run_json_object(client, c, max_tokens) for c in data["extraction_cases"]]
    print(f"{CONCURRENT} concurrent streamed extractions ...", flush=True)
    results["concurrent"] = run_concurrent(client, data["extraction_cases"], max_tokens)
    results["summary"] = {"tools_required": summarize_tools(results["tools_required"]),
                          "tools_auto": summarize_tools(results["tools_auto"]),
                          "extraction": summarize_extraction(results["extraction"], results["json_object"]),
                          "concurrent": {k: v for k, v in results["concurrent"].items() if k != "cases"}}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running service, e.g. http://127.0.0.1:8000 (default: start one here)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args(argv)
    data = json.loads(DATA.read_text())
    if args.base_url:
        results = evaluate(args.base_url.rstrip("/"), data, args.max_tokens)
    else:
        from bench.service import start_service, stop_service
        from serve.ports import free_port

        base, _ = start_service(free_port())
        try:
            results = evaluate(base, data, args.max_tokens)
        finally:
            stop_service()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (args.out.parent / "report.md").write_text(report_md(results))
    print(summary_table(results["summary"]))
    print(f"\nwrote {args.out} and {args.out.parent / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
