"""Continuous batching on the packaged SmolLM2-135M: single-stream eager vs engine, and aggregate
throughput of 1, 2, 4, 8 concurrent streams through the engine.

    .venv/bin/python bench/llm_batch.py [--modes none int8 int4] [--threads 1] [--repeats 3] [--new-tokens 64]

Per quantization mode one model is loaded; the eager loop and the batched engine run on that same
model, round-robin within each repeat (so machine noise hits them alike); figures are medians over
the repeats, with min and max. Every stream is greedy with EOS ignored, so each produces exactly
`--new-tokens` tokens, and is consumed through `LLMRuntime.stream` (detokenization included) in its
own thread, as concurrent requests would be. Each stream gets its own prompt (different lengths).

- `single`: one stream, eager loop vs engine: tokens / time from the call to the last token;
- `streams=N`: N streams started together through the engine:
  `aggregate tok/s` = all tokens / time from the first call to the last token (prefills included);
  `decode tok/s` = tokens after each stream's first / time from the last first token to the last
  token (the batched steady state: every joining prompt is prefilled before the shared steps);
  `vs single` = aggregate over the engine's single-stream figure of the same repeat.

Every figure also comes per CPU second (`tok_per_cpu_s`: tokens / this process's CPU time, all
threads): on a shared, overloaded machine wall-clock time mostly measures the neighbours, while CPU
time measures the work our process needed; the `*_cpu` ratios are the more stable ones there.

The engine's tokens are checked against the eager loop's (same prompt, greedy) before timing.
Results are merged into bench/results/llm_batch.json under "<mode>/threads=<n>" (a run with other
modes or threads adds its rows and keeps the others). On a shared 2-core machine use `--threads 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modalities.llm import EagerDecodeLoop, LLMConfig, LLMRuntime, SamplingParams, prepare_llm  # noqa: E402
from modalities.llm.engine import BatchedEngine  # noqa: E402

RESULTS = REPO / "bench" / "results" / "llm_batch.json"
MODES = ("none", "int8", "int4", "w8a8")
STREAM_COUNTS = (1, 2, 4, 8)
WARMUP_TOKENS = 8
QUESTIONS = [
    "Tell me about the history of Paris in a few paragraphs.",
    "Where is my parcel?",
    "My parcel arrived damaged: the box is crushed and the glass inside is broken. What can I do now?",
    "Explain photosynthesis to a ten year old.",
    "Write a short poem about the sea.",
    "What are three tips for a job interview?",
    "How do I reset my password if I no longer have access to the email address on my account?",
    "Summarise the plot of Romeo and Juliet.",
]


def run_streams(runtime: LLMRuntime, prompts: list[list[int]], new_tokens: int) -> dict[str, float]:
    """Start one consumer thread per prompt at once; per-stream token timestamps → throughput figures."""
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    stamps: list[list[float]] = [[] for _ in prompts]
    errors: list[BaseException] = []

    def consume(index: int) -> None:
        try:
            for _ in runtime.stream(input_ids=prompts[index], params=params):
                stamps[index].append(time.perf_counter())
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(prompts))]
    cpu_start = time.process_time()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu_s = time.process_time() - cpu_start
    if errors:
        raise errors[0]
    assert all(len(s) == new_tokens for s in stamps), [len(s) for s in stamps]
    end = max(s[-1] for s in stamps)
    last_first = max(s[0] for s in stamps)
    figures = {
        "aggregate_tok_s": len(prompts) * new_tokens / (end - start),
        "tok_per_cpu_s": len(prompts) * new_tokens / cpu_s,
    }
    if end > last_first:
        figures["decode_tok_s"] = len(prompts) * (new_tokens - 1) / (end - last_first)
    figures["first_token_s_max"] = last_first - start
    return figures


def spread(figure: dict[str, float]) -> str:
    return f"{figure['median']} ({figure['min']}-{figure['max']})"


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def bench_mode(model_dir: Path, mode: str, threads: int, repeats: int, new_tokens: int) -> dict:
    start = time.perf_counter()
    engine_rt = LLMRuntime.from_config(
        LLMConfig(model=str(model_dir), quantization=mode, threads=threads, engine="batched", max_batch=max(STREAM_COUNTS))
    )
    load_s = time.perf_counter() - start
    assert isinstance(engine_rt.decode_loop, BatchedEngine)
    eager_rt = LLMRuntime(engine_rt.model, engine_rt.tokenizer, decode_loop=EagerDecodeLoop(engine_rt.model))
    prompts = [engine_rt.chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]

    check = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    eager_tokens = eager_rt.generate(input_ids=prompts[0], params=check).token_ids
    engine_tokens = engine_rt.generate(input_ids=prompts[0], params=check).token_ids
    # Concurrent: every stream must still get its own single-stream tokens.
    concurrent = run_and_collect(engine_rt, prompts[:4], check)
    singles = [eager_rt.generate(input_ids=p, params=check).token_ids for p in prompts[:4]]
    match = {
        "single_stream": engine_tokens == eager_tokens,
        "four_concurrent": concurrent == singles,
        "divergences": [
            divergence(engine_rt, prompt, ours, theirs)
            for prompt, ours, theirs in zip([prompts[0], *prompts[:4]], [engine_tokens, *concurrent], [eager_tokens, *singles])
            if ours != theirs
        ],
    }
    run_streams(engine_rt, prompts[:2], WARMUP_TOKENS)

    samples: dict[str, list[dict[str, float]]] = {"eager_single": [], **{f"streams={n}": [] for n in STREAM_COUNTS}}
    for _ in range(repeats):
        samples["eager_single"].append(run_streams(eager_rt, prompts[:1], new_tokens))
        for n in STREAM_COUNTS:
            samples[f"streams={n}"].append(run_streams(engine_rt, prompts[:n], new_tokens))

    eager = samples["eager_single"]
    single = samples["streams=1"]

    def ratios(runs, bases, key):
        return summary([r[key] / b[key] for r, b in zip(runs, bases)])

    rows = {
        "single_stream": {
            "eager_tok_s": summary([s["aggregate_tok_s"] for s in eager]),
            "engine_tok_s": summary([s["aggregate_tok_s"] for s in single]),
            "engine_vs_eager": ratios(single, eager, "aggregate_tok_s"),
            "eager_tok_per_cpu_s": summary([s["tok_per_cpu_s"] for s in eager]),
            "engine_tok_per_cpu_s": summary([s["tok_per_cpu_s"] for s in single]),
            "engine_vs_eager_cpu": ratios(single, eager, "tok_per_cpu_s"),
        },
        "engine": {},
    }
    for n in STREAM_COUNTS:
        runs = samples[f"streams={n}"]
        rows["engine"][n] = {
            "aggregate_tok_s": summary([r["aggregate_tok_s"] for r in runs]),
            "decode_tok_s": summary([r["decode_tok_s"] for r in runs]),
            "tok_per_cpu_s": summary([r["tok_per_cpu_s"] for r in runs]),
            "first_token_s_max": summary([r["first_token_s_max"] for r in runs]),
            "vs_single": ratios(runs, single, "aggregate_tok_s"),
            "vs_single_cpu": ratios(runs, single, "tok_per_cpu_s"),
        }
    engine_rt.decode_loop.close()
    return {
        "mode": mode,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "new_tokens": new_tokens,
        "prompt_tokens": [len(p) for p in prompts],
        "load_s": round(load_s, 2),
        "weight_mb": round(engine_rt.weight_bytes() / 1e6, 1),
        "tokens_match_eager": match,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # others' work on a shared machine
        **rows,
        "samples": samples,
    }


def divergence(runtime: LLMRuntime, prompt: list[int], ours: list[int], theirs: list[int]) -> dict[str, float]:
    """Where the engine's greedy tokens leave the eager loop's, and the eager top-2 logit gap there
    (0 or one bf16 step means a numerical tie, not a wrong row or position)."""
    step = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    with torch.inference_mode():
        logits = runtime.model(torch.tensor([prompt + theirs[:step]], device=runtime.device)).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return {"step": step, "top2_logit_gap": round(float(top[0] - top[1]), 4), "top_logit": round(float(top[0]), 3)}


def run_and_collect(runtime: LLMRuntime, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    results: list[list[int]] = [[] for _ in prompts]

    def consume(index: int) -> None:
        results[index] = runtime.generate(input_ids=prompts[index], params=params).token_ids

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["none"], choices=MODES)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to merge the results into")
    args = parser.parse_args()

    model_dir = prepare_llm()
    result = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    result.update(
        {
            "model": str(model_dir),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        }
    )
    print(f"\nSmolLM2-135M, {args.new_tokens} new tokens greedy, {args.threads} threads, median of {args.repeats}\n")
    print("wall-clock tok/s (ratios: median of per-repeat ratios, min-max); CPU: tokens per CPU second\n")
    print("| mode | eager 1 | engine 1 | engine/eager | 2 streams | 4 streams | 8 streams | 8 vs 1 "
          "| CPU: engine/eager | CPU: 8 vs 1 | 8 decode tok/s | match |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode in args.modes:
        run = bench_mode(model_dir, mode, args.threads, args.repeats, args.new_tokens)
        run["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result["runs"][f"{mode}/threads={args.threads}"] = run
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        single, engine = run["single_stream"], run["engine"]
        cells = [
            single["eager_tok_s"]["median"],
            single["engine_tok_s"]["median"],
            spread(single["engine_vs_eager"]),
            engine[2]["aggregate_tok_s"]["median"],
            engine[4]["aggregate_tok_s"]["median"],
            engine[8]["aggregate_tok_s"]["median"],
            spread(engine[8]["vs_single"]),
            spread(single["engine_vs_eager_cpu"]),
            spread(engine[8]["vs_single_cpu"]),
            engine[8]["decode_tok_s"]["median"],
            "yes" if not run["tokens_match_eager"]["divergences"] else f"ties? {run['tokens_match_eager']['divergences']}",
        ]
        print(f"| {mode} | " + " | ".join(str(c) for c in cells) + " |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
