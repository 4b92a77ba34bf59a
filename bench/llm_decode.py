"""Decode speed of the packaged SmolLM2-135M: our loop per quantization vs HF `generate` (fp32).

    .venv/bin/python bench/llm_decode.py [--repeats 3] [--new-tokens 64] [--threads 2] [--compile-int8]

All runtimes are loaded into one process and measured round-robin (mode after mode within each
repeat), so machine noise hits them alike; figures are medians over the repeats. Every run is
greedy with EOS ignored, so each produces exactly `--new-tokens` tokens. Our loop is timed through
`LLMRuntime.stream` (detokenization included):

- `decode tok/s`: tokens after the first / time from first to last token (prefill excluded);
- `end-to-end tok/s`: all tokens / time from the call to the last token (prefill included), the
  figure comparable with HF `generate`, timed the same way on the same fp32 model.

Prints a markdown table and writes bench/results/llm_decode.json. On a shared 2-core machine use
`--threads 1`: with other work running, two torch threads spin against it and every row drops 3-4x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modalities.llm import LLMConfig, LLMRuntime, SamplingParams, prepare_llm  # noqa: E402

RESULTS = REPO / "bench" / "results" / "llm_decode.json"
MODES = ("none", "int8", "int4", "w8a8")
PROMPT = [{"role": "user", "content": "Tell me about the history of Paris in a few paragraphs."}]
WARMUP_TOKENS = 8
HF_REFERENCE = "hf_generate_fp32"
COMPILED_INT8 = "int8+compile"


def time_stream(runtime: LLMRuntime, ids: list[int], new_tokens: int) -> dict[str, float]:
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in runtime.stream(input_ids=ids, params=params)]
    assert len(stamps) == new_tokens, len(stamps)
    return {
        "first_token_s": stamps[0] - start,
        "decode_tok_s": (new_tokens - 1) / (stamps[-1] - stamps[0]),
        "e2e_tok_s": new_tokens / (stamps[-1] - start),
    }


def time_hf_generate(runtime: LLMRuntime, ids: list[int], new_tokens: int) -> dict[str, float]:
    input_ids = torch.tensor([ids], device=runtime.device)
    with torch.inference_mode():
        start = time.perf_counter()
        out = runtime.model.generate(
            input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
        elapsed = time.perf_counter() - start
    assert out.shape[1] - len(ids) == new_tokens
    return {"e2e_tok_s": new_tokens / elapsed}


def load(model_dir: Path, mode: str, threads: int) -> tuple[LLMRuntime, float]:
    start = time.perf_counter()
    runtime = LLMRuntime.from_config(LLMConfig(model=str(model_dir), quantization=mode, threads=threads))
    return runtime, time.perf_counter() - start


def compile_model(runtime: LLMRuntime) -> float:
    """torch.compile the forward (dynamic shapes: the KV cache grows every step); returns compile+warmup s."""
    runtime.model.forward = torch.compile(runtime.model.forward, dynamic=True)
    start = time.perf_counter()
    ids = runtime.chat_template(PROMPT)
    # Two different lengths: the first call specialises, the second triggers the dynamic graph.
    for _ in range(2):
        time_stream(runtime, ids, WARMUP_TOKENS)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--compile-int8", action="store_true", help="also time a torch.compile'd int8 model")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()

    start = time.perf_counter()
    model_dir = prepare_llm()
    prepare_s = time.perf_counter() - start

    runtimes: dict[str, LLMRuntime] = {}
    load_s: dict[str, float] = {}
    for mode in args.modes:
        runtimes[mode], load_s[mode] = load(model_dir, mode, args.threads)
    compile_s = None
    if args.compile_int8:
        runtimes[COMPILED_INT8], load_s[COMPILED_INT8] = load(model_dir, "int8", args.threads)
        compile_s = compile_model(runtimes[COMPILED_INT8])
    reference = runtimes.get("none") or load(model_dir, "none", args.threads)[0]

    ids = reference.chat_template(PROMPT)
    for runtime in runtimes.values():
        time_stream(runtime, ids, WARMUP_TOKENS)
    time_hf_generate(reference, ids, WARMUP_TOKENS)

    samples: dict[str, list[dict[str, float]]] = {name: [] for name in [*runtimes, HF_REFERENCE]}
    for _ in range(args.repeats):
        for name, runtime in runtimes.items():
            samples[name].append(time_stream(runtime, ids, args.new_tokens))
        samples[HF_REFERENCE].append(time_hf_generate(reference, ids, args.new_tokens))

    def median(name: str, key: str) -> float | None:
        values = [s[key] for s in samples[name] if key in s]
        return round(statistics.median(values), 2) if values else None

    hf_e2e = median(HF_REFERENCE, "e2e_tok_s")
    rows = []
    for name in samples:
        runtime = runtimes.get(name, reference)
        e2e = median(name, "e2e_tok_s")
        rows.append(
            {
                "name": name,
                "decode_tok_s": median(name, "decode_tok_s"),
                "e2e_tok_s": e2e,
                "first_token_s": median(name, "first_token_s"),
                "vs_hf_generate": round(e2e / hf_e2e, 2),
                "weight_mb": round(runtime.weight_bytes() / 1e6, 1),
                "load_s": round(load_s[name], 2) if name in load_s else None,
            }
        )

    result = {
        "model": str(model_dir),
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "prepare_s": round(prepare_s, 2),
        "int8_compile_s": round(compile_s, 1) if compile_s is not None else None,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # others' work on a shared machine
        "rows": rows,
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nSmolLM2-135M, {len(ids)}-token prompt, {args.new_tokens} new tokens greedy, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}; prepare {prepare_s:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| run | decode tok/s | end-to-end tok/s | first token s | vs HF generate | weights MB | load s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        cells = [row[k] if row[k] is not None else "–" for k in
                 ("decode_tok_s", "e2e_tok_s", "first_token_s", "vs_hf_generate", "weight_mb", "load_s")]
        print(f"| {row['name']} | " + " | ".join(str(c) for c in cells) + " |")
    if compile_s is not None:
        print(f"\nint8 torch.compile: {compile_s:.1f} s compile + warmup")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
