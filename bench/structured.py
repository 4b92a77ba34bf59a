"""What constrained decoding costs in the served engine: per-token time with and without a grammar.

The decoder the CPU default serves (ONNX int4 export under the batched scheduler), in this process:
1 stream and 8 concurrent streams, each either unconstrained or constrained by a JSON schema (8
different schemas for the 8 streams), alternated A/B so machine load hits both alike. Per-token time
is measured between a stream's first and last token (prefill excluded). Also: first-use compile time
of every held-out extraction schema and each tool set, and whether every constrained answer is valid.

Run: `python -m bench.structured [--repeats N] [--out FILE]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import jsonschema

from modalities.llm import LLMConfig, LLMRuntime, SamplingParams
from modalities.llm import constraint as constraints
from modalities.llm.grammar import GrammarCompiler

DATA = Path(__file__).resolve().parent / "data" / "structured_heldout.json"
MAX_TOKENS = 160


def _per_token_s(runtime: LLMRuntime, prompt: list[int], params: SamplingParams) -> tuple[float, int, str]:
    """(seconds per token after the first, tokens, text) for one answer."""
    stamps: list[float] = []
    text: list[str] = []
    for event in runtime.stream(input_ids=prompt, params=params):
        stamps.append(time.perf_counter())
        text.append(event.text)
    per_token = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return per_token, len(stamps), "".join(text)


def _concurrent(runtime: LLMRuntime, jobs: list[tuple[list[int], SamplingParams]]) -> list[tuple[float, int, str]]:
    results: list = [None] * len(jobs)

    def one(index: int) -> None:
        results[index] = _per_token_s(runtime, *jobs[index])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="decoder threads (the served replica's: 1)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/structured/cost.json"))
    args = parser.parse_args()
    data = json.loads(DATA.read_text())
    runtime = LLMRuntime.from_config(LLMConfig(engine="onnx", quantization="int4", threads=args.threads))
    cases = data["extraction_cases"][:8]
    prompts = [runtime.chat_template(case["messages"]) for case in cases]
    schemas = [case["schema"] for case in cases]

    fresh = GrammarCompiler(runtime.tokenizer, runtime.grammars.vocab_size)
    compile_ms = {}
    for case in data["extraction_cases"]:
        started = time.perf_counter()
        fresh.matcher(constraints.json_schema(case["schema"]))
        compile_ms[case["name"]] = (time.perf_counter() - started) * 1000
    specs = [constraints.ToolSpec(t["function"]["name"], t["function"]["parameters"]) for t in data["tools"]]
    started = time.perf_counter()
    fresh.matcher(constraints.tool_calls(specs, "required", False))
    compile_ms["tools (8, required)"] = (time.perf_counter() - started) * 1000

    def params(schema: dict | None) -> SamplingParams:
        constraint = None if schema is None else constraints.json_schema(schema)
        return SamplingParams(temperature=0, max_tokens=MAX_TOKENS, constraint=constraint)

    one_free, one_bound, many_free, many_bound, valid = [], [], [], [], []
    _per_token_s(runtime, prompts[0], params(schemas[0]))  # warm-up: compiles, allocates
    for _ in range(args.repeats):
        one_free.append(_per_token_s(runtime, prompts[0], params(None))[0])
        per_token, _count, text = _per_token_s(runtime, prompts[0], params(schemas[0]))
        one_bound.append(per_token)
        valid.append(_valid(text, schemas[0]))
        free = _concurrent(runtime, [(p, params(None)) for p in prompts])
        bound = _concurrent(runtime, [(p, params(s)) for p, s in zip(prompts, schemas)])
        many_free.append(statistics.median(r[0] for r in free))
        many_bound.append(statistics.median(r[0] for r in bound))
        valid += [_valid(r[2], s) for r, s in zip(bound, schemas)]
    result = {
        "per_token_ms_1_stream": {"free": statistics.median(one_free) * 1e3, "constrained": statistics.median(one_bound) * 1e3},
        "per_token_ms_8_streams": {"free": statistics.median(many_free) * 1e3, "constrained": statistics.median(many_bound) * 1e3},
        "compile_ms_first_use": compile_ms,
        "constrained_answers_valid": f"{sum(valid)}/{len(valid)}",
        "repeats": args.repeats,
        "threads": args.threads,
    }
    for key in ("per_token_ms_1_stream", "per_token_ms_8_streams"):
        result[key]["ratio"] = result[key]["constrained"] / result[key]["free"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
