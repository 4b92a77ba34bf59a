"""LLM sections: decode vs llama.cpp, decode vs the memory-bandwidth bound, quantization modes,
concurrency. Each takes the run's `BenchContext` and adds `Figure`s to its report.

Every comparison is measured interleaved (ours, then the reference, within each repeat) so that
load changes on a shared machine hit both alike.
"""

from __future__ import annotations

import threading
import time

import torch

from bench.context import (
    BenchContext,
    available_engines,
    decode_rate,
    default_engine,
    engine_label,
    greedy,
    new_question,
    stream_stamps,
)
from bench.llama_cpp_ref import NOT_INSTALLED, LlamaCppBatch, LlamaCppDecoder
from bench.report import Figure, Stat, Target
from modalities.llm import SamplingParams
from modalities.llm.quant import PackedBfloat16Head, tensor_bytes
from modalities.llm.quant.w8a8 import Int8Head

PROMPT = [{"role": "user", "content": "Tell me about the history of Paris in a few paragraphs."}]
WARMUP_TOKENS = 8
MIN_RATIO_VS_LLAMA_CPP = 0.5
MAX_WEIGHT_RATIO = 0.35
MIN_QUANT_SPEED_RATIO = 1.0
MIN_AGREEMENT_PCT = 95.0
AGREEMENT_TOKENS = 32
# A fixed, varied prompt set for greedy agreement with fp32 (customer service, facts, code, lists).
AGREEMENT_PROMPTS = (
    "Where is my parcel? I ordered it ten days ago.",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a refund is in one paragraph.",
    "List three tips for packing fragile items.",
    "Write a Python function that reverses a string.",
    "My phone screen is cracked. What should I do?",
    "Summarize the plot of Romeo and Juliet.",
)
# A customer-service deployment's system prompt: the part of every chat the prefix cache keeps.
SUPPORT_POLICY = (
    "You are the support assistant of Northwind Parcels, a delivery company. Answer in two or three "
    "short sentences, politely, in the customer's language. Policies: a parcel counts as late when it "
    "is more than two working days past its estimated delivery date; late parcels get a tracking "
    "investigation, and after ten working days a refund of the shipping fee or a free resend, as the "
    "customer prefers. Damaged parcels: ask for a photo of the box and of the contents within seven "
    "days of delivery, then offer a replacement or a full refund. Returns are free within thirty days "
    "for unused items in their original packaging; the customer prints a label from their account "
    "page. Never promise a delivery date the tracking system does not show. Never ask for a full card "
    "number or a password. Addresses can be changed until the parcel leaves the depot; after that, "
    "offer a hold at a pickup point. If the customer is upset, apologise once and move to a concrete "
    "next step. If you do not know, say so and offer to open a ticket for a human agent, who answers "
    "within one working day. Opening hours of the phone line: Monday to Friday, 8:00 to 18:00."
)
COPY_BYTES = 256 * 2**20  # far beyond any CPU cache: the copy runs at memory speed
QUICK_COPY_BYTES = 64 * 2**20
COPIES_PER_SAMPLE = 3
CONCURRENCY_LEVELS = (1, 2, 4, 8)
MIN_CONCURRENCY_SCALING = 4.0
SERVED_QUANTIZATION = "int4"  # deploy/local.yaml's llm.quantization (the CPU default)
THROUGHPUT_QUANTIZATION = "w8a8"  # int8 x int8 GEMMs: the mode for many streams and long prompts


def _prompt_ids(ctx: BenchContext) -> list[int]:
    return ctx.runtime().chat_template(PROMPT)


# --- 1. decode vs llama.cpp ----------------------------------------------------------------------


def section_decode(ctx: BenchContext) -> None:
    """Our decode tok/s (fp32 as deployed, and int4, closest to llama.cpp's Q4_1) vs llama.cpp."""
    opts, report = ctx.options, ctx.report
    repeats = 2 if opts.quick else opts.repeats
    new_tokens = 16 if opts.quick else opts.new_tokens
    ids = _prompt_ids(ctx)
    ours: dict[str, object] = {}
    # fp32 and int4 through every engine; w8a8 (the concurrency mode) through the default one.
    pairs = [(q, e) for e in available_engines() for q in ("none", "int4")] + [(THROUGHPUT_QUANTIZATION, default_engine())]
    for quantization, engine in pairs:
        label = f"{quantization}, {engine_label(engine)}"
        try:
            ours[label] = ctx.runtime(quantization, engine)
        except Exception as e:  # noqa: BLE001 - reported as not measured, with the reason
            report.add(Figure("decode", f"decode tok/s, ours ({label})", "tok/s", None, note=f"{type(e).__name__}: {e}"))
    try:
        llama = LlamaCppDecoder(opts.threads)
    except ImportError:
        llama, why = None, NOT_INSTALLED
    except Exception as e:  # noqa: BLE001
        llama, why = None, f"llama.cpp failed to load the GGUF: {type(e).__name__}: {e}"

    for runtime in ours.values():
        stream_stamps(runtime, ids, WARMUP_TOKENS)
    if llama is not None:
        llama.stamps(ids, WARMUP_TOKENS)
    rates: dict[str, list[float]] = {label: [] for label in ours}
    reference: list[float] = []
    for _ in range(repeats):
        for label, runtime in ours.items():
            rates[label].append(decode_rate(stream_stamps(runtime, ids, new_tokens)[1]))
        if llama is not None:
            stamps, llama_tokens = llama.stamps(ids, new_tokens)
            reference.append(decode_rate(stamps))
    ref_stat = Stat.of(reference) if reference else None
    detail: dict = {"prompt_tokens": len(ids), "new_tokens": new_tokens, "repeats": repeats, "ours": rates}
    if llama is not None:
        ours_tokens = ctx.runtime().generate(input_ids=ids, params=greedy(new_tokens)).token_ids
        same = sum(a == b for a, b in zip(ours_tokens, llama_tokens))
        detail.update(llama_cpp=reference, llama_cpp_gguf=str(llama.path), tokens_equal_to_fp32=f"{same}/{new_tokens}")
    for label, samples in rates.items():
        report.add(
            Figure(
                "decode",
                f"decode tok/s, ours ({label})",
                "tok/s",
                Stat.of(samples),
                ref_stat,
                "llama.cpp Q4_1" if llama is not None else NOT_INSTALLED,
                Target(">=", MIN_RATIO_VS_LLAMA_CPP),
                note="" if llama is not None else f"reference not measured: {why}",
            )
        )
    engines = [e for e in available_engines() if e is not None]
    for engine in engines[1:]:  # engines other than eager, against eager in the same run
        for quantization in ("none", "int4"):
            mine, base = f"{quantization}, {engine}", f"{quantization}, {engines[0]}"
            if mine in rates and base in rates:
                report.add(
                    Figure("decode", f"decode tok/s, {mine}", "tok/s", Stat.of(rates[mine]), Stat.of(rates[base]), base)
                )
    ctx.report.sections["decode"] = detail


# --- 2. decode vs the memory-bandwidth bound -----------------------------------------------------


def bytes_read_per_token(runtime) -> int:
    """Weight bytes one decode step reads: all of them, except an input-embedding table that the
    output head doesn't multiply with (int4's head runs on its own int8 or packed bfloat16 copy;
    a lookup, and the int8 head's float32 top, read a few rows of the table)."""
    total = runtime.weight_bytes()
    if isinstance(runtime.model.get_output_embeddings(), (PackedBfloat16Head, Int8Head)):
        embedding = runtime.model.get_input_embeddings()
        total -= sum(tensor_bytes(t) for t in (*embedding.parameters(), *embedding.buffers()))
    return total


def copy_bandwidth(nbytes: int, copies: int = COPIES_PER_SAMPLE) -> float:
    """Bytes read + written per second by large tensor copies (torch's current thread count)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in before timing
    start = time.perf_counter()
    for _ in range(copies):
        dst.copy_(src)
    return copies * 2 * nbytes / (time.perf_counter() - start)


def section_bandwidth(ctx: BenchContext) -> None:
    """Decode tok/s as a fraction of bandwidth / bytes of weights read per token."""
    opts, report = ctx.options, ctx.report
    repeats = 2 if opts.quick else opts.repeats
    new_tokens = 16 if opts.quick else opts.new_tokens
    nbytes = QUICK_COPY_BYTES if opts.quick else COPY_BYTES
    ids = _prompt_ids(ctx)
    runtimes = {}
    for quantization in ("none", "int4"):
        try:
            runtimes[quantization] = ctx.runtime(quantization)
        except Exception as e:  # noqa: BLE001
            report.add(Figure("bandwidth", f"decode tok/s vs bandwidth bound ({quantization})", "tok/s", None,
                              note=f"{type(e).__name__}: {e}"))
    for runtime in runtimes.values():
        stream_stamps(runtime, ids, WARMUP_TOKENS)
    copy_bandwidth(nbytes)
    bandwidth: list[float] = []
    rates: dict[str, list[float]] = {q: [] for q in runtimes}
    for _ in range(repeats):
        bandwidth.append(copy_bandwidth(nbytes))
        for quantization, runtime in runtimes.items():
            rates[quantization].append(decode_rate(stream_stamps(runtime, ids, new_tokens)[1]))
    detail = {"copy_bytes": nbytes, "bandwidth_gb_s": [round(b / 1e9, 3) for b in bandwidth], "rows": {}}
    report.add(Figure("bandwidth", "copy bandwidth (read + write)", "GB/s", Stat.of([b / 1e9 for b in bandwidth]),
                      note=f"{nbytes // 2**20} MiB float32 tensor copied {COPIES_PER_SAMPLE}× per sample, {opts.threads} thread(s)"))
    for quantization, runtime in runtimes.items():
        per_token = bytes_read_per_token(runtime)
        bounds = [b / per_token for b in bandwidth]
        detail["rows"][quantization] = {"weight_bytes_per_token": per_token, "bound_tok_s": bounds, "tok_s": rates[quantization]}
        report.add(
            Figure(
                "bandwidth",
                f"decode tok/s vs bandwidth bound ({quantization})",
                "tok/s",
                Stat.of(rates[quantization]),
                Stat.of(bounds),
                f"bound: bandwidth / {per_token / 1e6:.0f} MB per token",
                note="" if quantization != "none" else
                "bytes per token = the runtime's weight_bytes() (every weight read once per token; KV cache "
                "and activations not counted), less an input-embedding table the head doesn't multiply with "
                "(int4's head multiplies with its own int8 copy; a lookup reads one row), so the bound is an upper limit "
                "on decode speed",
            )
        )
    report.sections["bandwidth"] = detail


# --- 3. quantization modes -----------------------------------------------------------------------


def _teacher_forced_agreement(runtime, prompts: list[list[int]], references: list[list[int]]) -> float:
    """Share of positions where this model's argmax, fed the fp32 greedy continuation, equals it."""
    agree = total = 0
    with torch.inference_mode():
        for ids, ref in zip(prompts, references):
            sequence = torch.tensor([ids + ref[:-1]], device=runtime.device)
            logits = runtime.model(input_ids=sequence).logits[0, len(ids) - 1 :]
            predicted = logits.argmax(dim=-1).tolist()
            agree += sum(p == r for p, r in zip(predicted, ref))
            total += len(ref)
    return 100.0 * agree / total


def _answer(tokens: int) -> SamplingParams:
    """Greedy up to `tokens`, stopping at EOS: agreement is about the answer, not what follows its end
    (past EOS the next-token distribution is flat and any perturbation flips the argmax)."""
    return SamplingParams(temperature=0.0, max_tokens=tokens)


def _free_running_agreement(runtime, prompts: list[list[int]], references: list[list[int]], tokens: int) -> float:
    """Share of fp32's positions this model reproduces when generating on its own (a divergence cascades)."""
    agree = total = 0
    for ids, ref in zip(prompts, references):
        mine = runtime.generate(input_ids=ids, params=_answer(tokens)).token_ids
        agree += sum(a == b for a, b in zip(mine, ref))
        total += len(ref)
    return 100.0 * agree / total


def section_quant(ctx: BenchContext) -> None:
    """none / int8 / int4 / w8a8: weight memory, decode tok/s and greedy agreement, each against fp32."""
    opts, report = ctx.options, ctx.report
    repeats = 2 if opts.quick else opts.repeats
    new_tokens = 16 if opts.quick else opts.new_tokens
    n_prompts, agreement_tokens = (2, 8) if opts.quick else (len(AGREEMENT_PROMPTS), AGREEMENT_TOKENS)
    reference = ctx.runtime("none")
    ids = _prompt_ids(ctx)
    runtimes = {"none": reference}
    for mode in ("int8", "int4", THROUGHPUT_QUANTIZATION):
        try:
            runtimes[mode] = ctx.runtime(mode)
        except Exception as e:  # noqa: BLE001
            for name in ("weight memory", "decode tok/s", "greedy agreement"):
                report.add(Figure("quant", f"{name}, {mode}", "", None, note=f"{type(e).__name__}: {e}"))
    for runtime in runtimes.values():
        stream_stamps(runtime, ids, WARMUP_TOKENS)
    rates: dict[str, list[float]] = {mode: [] for mode in runtimes}
    for _ in range(repeats):
        for mode, runtime in runtimes.items():
            rates[mode].append(decode_rate(stream_stamps(runtime, ids, new_tokens)[1]))

    prompts = [reference.chat_template([{"role": "user", "content": p}]) for p in AGREEMENT_PROMPTS[:n_prompts]]
    fp32_tokens = [reference.generate(input_ids=p, params=_answer(agreement_tokens)).token_ids for p in prompts]
    fp32_bytes = reference.weight_bytes()
    detail: dict = {"new_tokens": new_tokens, "repeats": repeats, "agreement_prompts": n_prompts,
                    "agreement_tokens": agreement_tokens, "modes": {}}
    for mode, runtime in runtimes.items():
        if mode == "none":
            detail["modes"][mode] = {"weight_bytes": fp32_bytes, "tok_s": rates[mode]}
            continue
        size = runtime.weight_bytes()
        forced = _teacher_forced_agreement(runtime, prompts, fp32_tokens)
        free = _free_running_agreement(runtime, prompts, fp32_tokens, agreement_tokens)
        skipped = runtime.quantization.skipped
        detail["modes"][mode] = {"weight_bytes": size, "tok_s": rates[mode], "teacher_forced_agreement_pct": forced,
                                 "free_running_agreement_pct": free, "layers_left_float": skipped}
        report.add(Figure("quant", f"weight memory, {mode}", "MB", Stat.exact(size / 1e6), Stat.exact(fp32_bytes / 1e6),
                          "fp32", Target("<=", MAX_WEIGHT_RATIO),
                          note=f"{mode}: {len(skipped)} linear layer(s) not quantized ({', '.join(sorted(set(skipped.values())))})"
                          if skipped else ""))
        report.add(Figure("quant", f"decode tok/s, {mode}", "tok/s", Stat.of(rates[mode]), Stat.of(rates["none"]), "fp32",
                          Target(">=", MIN_QUANT_SPEED_RATIO)))
        report.add(Figure("quant", f"greedy agreement with fp32, {mode}", "%", Stat.exact(forced), None,
                          f"fp32 greedy answers ({n_prompts} prompts, {sum(map(len, fp32_tokens))} tokens)", Target(">=", MIN_AGREEMENT_PCT, on="value"),
                          note=f"{mode}: per position of fp32's greedy answers (≤ {agreement_tokens} tokens, to EOS), fed fp32's "
                          f"tokens (teacher-forced); free-running "
                          f"(own tokens, a divergence cascades) {free:.1f} %"))
    report.sections["quant"] = detail


# --- 5. concurrency ------------------------------------------------------------------------------


def _concurrent_round(runtime, streams: int, new_tokens: int) -> dict:
    """`streams` greedy streams started together from threads, each a new customer question (its
    own prompt, never seen before: see `new_question`): aggregate tok/s and each TTFT."""
    prompts = _new_questions(runtime, streams)
    barrier = threading.Barrier(streams + 1)
    ttft: list[float] = [0.0] * streams
    ends: list[float] = [0.0] * streams
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            barrier.wait()
            start = time.perf_counter()
            for n, _ in enumerate(runtime.stream(input_ids=prompts[i], params=greedy(new_tokens))):
                if n == 0:
                    ttft[i] = time.perf_counter() - start
            ends[i] = time.perf_counter()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return {"aggregate_tok_s": streams * new_tokens / (max(ends) - start), "ttft_s": ttft}


def _new_questions(runtime, count: int) -> list[list[int]]:
    """`count` customer questions never asked before (`new_question`), as chat-template token ids."""
    return [
        runtime.chat_template([{"role": "user", "content": new_question(AGREEMENT_PROMPTS[i % len(AGREEMENT_PROMPTS)])}])
        for i in range(count)
    ]


def _llama_cpp_batching(ctx: BenchContext, levels: tuple[int, ...], repeats: int, new_tokens: int,
                        curve: dict[str, list[dict]], rows: list[str]) -> dict:
    """llama.cpp decoding 1..N new questions together in one batch per step (how its server batches
    its slots), same token ids, same threads: its own scaling, and our served default against it."""
    report = ctx.report
    try:
        llama = LlamaCppBatch(ctx.options.threads, max(levels))
    except ImportError:
        report.add(Figure("concurrency", "aggregate tok/s, llama.cpp sequences in one batch", "tok/s", None,
                          note=f"reference not measured: {NOT_INSTALLED}"))
        return {}
    except Exception as e:  # noqa: BLE001
        report.add(Figure("concurrency", "aggregate tok/s, llama.cpp sequences in one batch", "tok/s", None,
                          note=f"llama.cpp failed: {type(e).__name__}: {e}"))
        return {}
    runtime = ctx.runtime(SERVED_QUANTIZATION)  # only its chat template: the token ids ours get
    results: dict[int, list[float]] = {n: [] for n in levels}
    try:
        llama.run(_new_questions(runtime, 2), WARMUP_TOKENS)
        for _ in range(repeats):
            for n in levels:
                seconds, _ = llama.run(_new_questions(runtime, n), new_tokens)
                results[n].append(n * new_tokens / seconds)
    finally:
        llama.close()
    single, top = Stat.of(results[levels[0]]), levels[-1]
    for n in levels:
        rows.append(f"| llama.cpp, one batch | {n} | {Stat.of(results[n]).median:.1f} | – | – |")
    for n in levels[1:]:
        report.add(Figure("concurrency", f"aggregate tok/s, {n} sequences, llama.cpp (one batch)", "tok/s",
                          Stat.of(results[n]), single, "1 sequence",
                          note="llama.cpp Q4_1, every sequence's next token in one llama_decode per step, the prompts "
                               "prefilled together, no prefix reuse" if n == top else ""))
    for overrides, why in (({}, "the prefix cache on, as served"),
                           ({"prefix_cache_mib": 0}, "every prompt prefilled in full, as llama.cpp's")):
        label = _run_label(SERVED_QUANTIZATION, default_engine(), overrides)
        ours = next((p for p in curve.get(label, []) if p["streams"] == top), None)
        if ours is not None:
            report.add(Figure("concurrency", f"aggregate tok/s, {top} streams, {label}, vs llama.cpp", "tok/s",
                              Stat.of(ours["aggregate_samples"]), Stat.of(results[top]),
                              f"llama.cpp, {top} sequences in one batch", note=f"ours: {why}"))
    return {"aggregate_tok_s": {str(n): v for n, v in results.items()}}


def _prefix_hits(runtime) -> tuple[int, int] | None:
    """(prompt tokens, of which from the prefix cache) so far; None for the eager loop (no cache)."""
    stats = runtime.engine_stats()
    return None if stats is None else (stats.prompt_tokens, stats.prefix_hit_tokens)


def _run_label(quantization: str, engine: str | None, overrides: dict) -> str:
    """A concurrency run's name in the report: 'batched', 'int4, batched', '..., prefix cache off'."""
    label = engine_label(engine) if quantization == "none" else f"{quantization}, {engine_label(engine)}"
    return label + (", prefix cache off" if overrides.get("prefix_cache_mib") == 0 else "")


def _system_prompt_ttft(ctx: BenchContext, repeats: int) -> dict:
    """TTFT of a new question after a long system prompt (SUPPORT_POLICY), the served default with
    the prefix cache on vs off, alternating; the first request of each warms up (and fills the cache)."""
    engine = default_engine()
    try:
        cached = ctx.runtime(SERVED_QUANTIZATION, engine)
        uncached = ctx.runtime(SERVED_QUANTIZATION, engine, prefix_cache_mib=0)
    except Exception as e:  # noqa: BLE001
        ctx.report.add(Figure("concurrency", "TTFT after a long system prompt", "s", None, note=f"{type(e).__name__}: {e}"))
        return {}

    def ttft(runtime) -> tuple[float, int]:
        messages = [{"role": "system", "content": SUPPORT_POLICY}, {"role": "user", "content": new_question(AGREEMENT_PROMPTS[0])}]
        ids = runtime.chat_template(messages)
        start = time.perf_counter()
        for _ in runtime.stream(input_ids=ids, params=greedy(1)):
            return time.perf_counter() - start, len(ids)
        raise RuntimeError("the stream ended without a token")

    ttft(cached), ttft(uncached)
    samples: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(repeats):
        for name, runtime in (("on", cached), ("off", uncached)):
            seconds, length = ttft(runtime)
            samples[name].append(seconds)
    ctx.report.add(Figure(
        "concurrency", f"TTFT, 1 stream, {length}-token prompt after a long system prompt, {SERVED_QUANTIZATION}", "s",
        Stat.of(samples["on"]), Stat.of(samples["off"]), "prefix cache off",
        note="a new question after a customer-service system prompt (bench/llm_sections.py SUPPORT_POLICY); the "
             "prefix cache (on by default) reuses the system prompt's K/V, the question is prefilled",
    ))
    return {"prompt_tokens": length, "ttft_s": samples}


def _prefix_note(share: float | None) -> str:
    """How the streams' prompts were served, for the top concurrency row's note."""
    if share is None:
        cached = "no prefix cache (the eager loop)"
    elif not share:
        cached = "the prefix cache off"
    else:
        cached = f"{share} % of their positions from the prefix cache (the system prompt)"
    return (f"every stream a new customer question, {cached}; aggregate = all tokens / time from the start to "
            "the last token, prefills included")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def section_concurrency(ctx: BenchContext) -> None:
    """Aggregate tok/s and TTFT p50/p99 at 1, 2, 4, 8 streams, the engine called directly (threads)."""
    opts, report = ctx.options, ctx.report
    repeats = 1 if opts.quick else 2
    new_tokens = 8 if opts.quick else opts.new_tokens  # 64 by default, like the decode section and the figures
    levels = (1, 2) if opts.quick else CONCURRENCY_LEVELS
    ids = _prompt_ids(ctx)
    curve: dict[str, list[dict]] = {}
    prefix_share: dict[str, float] = {}
    rows = ["| engine | streams | aggregate tok/s (median) | TTFT p50 | TTFT p99 |", "| --- | --- | --- | --- | --- |"]
    # fp32 through every engine (the eager loop is the no-batching reference), then the served CPU
    # default (int4) and the throughput mode (w8a8) through the default engine; the served default
    # once more without the prefix cache, to show what the cache is worth.
    runs = [("none", engine, {}) for engine in available_engines()] + [
        (quantization, default_engine(), {}) for quantization in (SERVED_QUANTIZATION, THROUGHPUT_QUANTIZATION)
    ] + [(SERVED_QUANTIZATION, default_engine(), {"prefix_cache_mib": 0})]
    for quantization, engine, overrides in runs:
        label = _run_label(quantization, engine, overrides)
        try:
            runtime = ctx.runtime(quantization, engine, **overrides)
        except Exception as e:  # noqa: BLE001
            report.add(Figure("concurrency", f"aggregate tok/s, {label}", "tok/s", None, note=f"{type(e).__name__}: {e}"))
            continue
        stream_stamps(runtime, ids, WARMUP_TOKENS)
        _concurrent_round(runtime, 1, WARMUP_TOKENS)  # the system prompt's blocks, as a running service has them
        before = _prefix_hits(runtime)
        results: dict[int, list[dict]] = {n: [] for n in levels}
        for _ in range(repeats):
            for streams in levels:
                results[streams].append(_concurrent_round(runtime, streams, new_tokens))
        after = _prefix_hits(runtime)
        if before is not None and after is not None:
            prefix_share[label] = round(100 * (after[1] - before[1]) / max(after[0] - before[0], 1), 1)
        points = []
        for streams in levels:
            aggregate = [r["aggregate_tok_s"] for r in results[streams]]
            ttfts = [t for r in results[streams] for t in r["ttft_s"]]
            point = {"streams": streams, "aggregate_tok_s": Stat.of(aggregate).median, "aggregate_samples": aggregate,
                     "ttft_p50_s": _percentile(ttfts, 50), "ttft_p99_s": _percentile(ttfts, 99), "ttft_samples": ttfts}
            points.append(point)
            rows.append(f"| {label} | {streams} | {point['aggregate_tok_s']:.1f} | {point['ttft_p50_s']:.3f} s "
                        f"| {point['ttft_p99_s']:.3f} s |")
        curve[label] = points
        single = Stat.of([r["aggregate_tok_s"] for r in results[levels[0]]])
        top = levels[-1]
        for streams in levels[1:]:
            report.add(Figure("concurrency", f"aggregate tok/s, {streams} streams, {label}", "tok/s",
                              Stat.of([r["aggregate_tok_s"] for r in results[streams]]), single, "1 stream",
                              Target(">=", MIN_CONCURRENCY_SCALING) if streams == CONCURRENCY_LEVELS[-1] else None,
                              note=_prefix_note(prefix_share.get(label)) if streams == top else ""))
        top_ttfts = [t for r in results[top] for t in r["ttft_s"]]
        one_ttfts = [t for r in results[levels[0]] for t in r["ttft_s"]]
        report.add(Figure("concurrency", f"TTFT p50, {top} streams, {label}", "s",
                          Stat.exact(_percentile(top_ttfts, 50)), Stat.exact(_percentile(one_ttfts, 50)), "1 stream"))
        report.add(Figure("concurrency", f"TTFT p99, {top} streams, {label}", "s",
                          Stat.exact(_percentile(top_ttfts, 99)), Stat.exact(_percentile(one_ttfts, 99)), "1 stream"))
    llama_cpp = _llama_cpp_batching(ctx, levels, repeats, new_tokens, curve, rows)
    system_prompt = _system_prompt_ttft(ctx, 2 if opts.quick else 2 * opts.repeats)
    report.sections["concurrency"] = {
        "new_tokens": new_tokens, "repeats": repeats, "curve": curve, "markdown": "\n".join(rows),
        "system_prompt_ttft": system_prompt,
        "llama_cpp_batch": llama_cpp,
        "how": "each stream a thread calling LLMRuntime.stream on one shared runtime, started together; each "
               "stream a new customer question (a new ticket number), so only the chat template's system prompt "
               "can come from the prefix cache",
        "prefix_cache_hit_pct": prefix_share,
    }
