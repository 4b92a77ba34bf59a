"""What constrained decoding costs in the served engine: per-token time with and without a grammar.

The decoder the CPU default serves (ONNX int4 export under the batched scheduler), in this process:
1 stream and 8 concurrent streams, each either unconstrained or constrained by a JSON schema (8
different schemas for the 8 streams), alternated A/B so machine load hits both alike. Per-token time
is measured between a stream's first and last token (prefill excluded). Also: first-use compile time
of every held-out extraction schema and each tool set, and whether every constrained answer is valid.

Run: `chorus bench --only structured` (a section of the report), or `python -m bench.structured
[--repeats N] [--out FILE]` for the JSON alone.
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
MAX_TOKENS = 256
STREAMS = 8
TARGET_COST = 1.15  # constrained per-token time vs unconstrained, the bar


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


def measure(runtime: LLMRuntime, repeats: int) -> dict:
    """Per-token time with and without a grammar (1 and 8 streams, A/B alternated), first-use compile
    times, and the validity of every constrained answer."""
    data = json.loads(DATA.read_text())
    cases = data["extraction_cases"][:STREAMS]
    prompts = [runtime.chat_template(case["messages"]) for case in cases]
    schemas = [case["schema"] for case in cases]

    fresh = GrammarCompiler(runtime.tokenizer, runtime.grammars.vocab_size)  # nothing cached: first use
    compile_ms = {}
    for case in data["extraction_cases"]:
        started = time.perf_counter()
        fresh.matcher(constraints.json_schema(case["schema"]))
        compile_ms[case["name"]] = (time.perf_counter() - started) * 1000
    specs = [constraints.ToolSpec(t["function"]["name"], t["function"]["parameters"]) for t in data["tools"]]
    started = time.perf_counter()
    fresh.matcher(constraints.tool_calls(specs, "required", False))
    compile_ms[f"tools ({len(specs)}, required)"] = (time.perf_counter() - started) * 1000

    def params(schema: dict | None) -> SamplingParams:
        constraint = None if schema is None else constraints.json_schema(schema)
        return SamplingParams(temperature=0, max_tokens=MAX_TOKENS, constraint=constraint)

    samples: dict[str, list[float]] = {"1 free": [], "1 constrained": [], "8 free": [], "8 constrained": []}
    valid: list[bool] = []
    _per_token_s(runtime, prompts[0], params(schemas[0]))  # warm-up: compiles, allocates
    for _ in range(repeats):
        samples["1 free"].append(_per_token_s(runtime, prompts[0], params(None))[0])
        per_token, _count, text = _per_token_s(runtime, prompts[0], params(schemas[0]))
        samples["1 constrained"].append(per_token)
        valid.append(_valid(text, schemas[0]))
        free = _concurrent(runtime, [(p, params(None)) for p in prompts])
        bound = _concurrent(runtime, [(p, params(s)) for p, s in zip(prompts, schemas)])
        samples["8 free"].append(statistics.median(r[0] for r in free))
        samples["8 constrained"].append(statistics.median(r[0] for r in bound))
        valid += [_valid(r[2], s) for r, s in zip(bound, schemas)]
    return {"per_token_s": samples, "compile_ms_first_use": compile_ms, "valid": valid, "repeats": repeats}


def section_structured(ctx) -> None:
    """`chorus bench --only structured`: the table the Structured generation issue asks for."""
    from bench.report import Figure, Stat, Target

    opts, report = ctx.options, ctx.report
    result = measure(ctx.runtime("int4", "onnx"), 2 if opts.quick else opts.repeats)
    samples = result["per_token_s"]
    for streams in ("1", "8"):
        report.add(Figure("structured", f"per-token ms, {streams} stream(s), each with a JSON schema", "ms",
                          Stat.of([v * 1000 for v in samples[f"{streams} constrained"]]),
                          Stat.of([v * 1000 for v in samples[f"{streams} free"]]), "the same streams unconstrained",
                          Target("<=", TARGET_COST)))
    compile_ms = list(result["compile_ms_first_use"].values())
    report.add(Figure("structured", "grammar compile, first use (held-out schemas and the tool set)", "ms",
                      Stat.of(compile_ms), extra=result["compile_ms_first_use"]))
    valid = result["valid"]
    report.add(Figure("structured", "constrained answers valid against their schema", "%",
                      Stat.exact(100 * sum(valid) / len(valid)), target=Target(">=", 100.0, on="value"),
                      note=f"{sum(valid)}/{len(valid)} at max_tokens {MAX_TOKENS}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="decoder threads (the served replica's: 1)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/structured/cost.json"))
    args = parser.parse_args()
    runtime = LLMRuntime.from_config(LLMConfig(engine="onnx", quantization="int4", threads=args.threads))
    result = measure(runtime, args.repeats)
    samples = result.pop("per_token_s")
    for streams in ("1", "8"):
        free, bound = (statistics.median(samples[f"{streams} {k}"]) * 1e3 for k in ("free", "constrained"))
        result[f"per_token_ms_{streams}_stream"] = {"free": free, "constrained": bound, "ratio": bound / free}
    valid = result.pop("valid")
    result["constrained_answers_valid"] = f"{sum(valid)}/{len(valid)}"
    result["threads"] = args.threads
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
