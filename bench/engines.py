"""Performance II: every CPU decode engine side by side in one run (`chorus bench --only engines`).

Rows: llama.cpp on the Q4_1 GGUF the packaged weights come from (flash attention off and on), our
torch engine (`engine: batched`, int4) and our ONNX Runtime engine (`engine: onnx`, int4) called
directly, and the served default streamed through the HTTP API (a real Serve app from
deploy/local.yaml). Every row runs at `--threads` threads (the service: its decoder replica's own
setting, reported). Rounds alternate between the rows so machine-load drift hits them alike;
figures are medians.

- decode tok/s: 128 greedy tokens after the 46-token chat prompt (EOS ignored; the API, which has
  no ignore-EOS switch, counts its usage tokens up to EOS or 128): tokens after the first / time
  from the first to the last;
- prefill: time to the first token of a 540-token prompt;
- 8 streams: 8 different prompts at once, every token they produce / wall time from the first
  submission to the last token (prefill included), and that over the same engine's one stream;
- greedy agreement with fp32 (torch, unquantized): per position of fp32's greedy answers, fed
  fp32's tokens (teacher-forced); llama.cpp (no logits for a forced sequence through this API):
  free-running, its own tokens compared with fp32's;
- peak RSS: a fresh process that loads the engine and answers one prompt (its VmHWM; the service:
  the decoder replica's RSS after the run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch

from bench.context import BenchContext, decode_rate, greedy, median_of, new_question, stream_stamps
from bench.llama_cpp_ref import NOT_INSTALLED, LlamaCppBatch, LlamaCppDecoder
from bench.llm_sections import AGREEMENT_PROMPTS, AGREEMENT_TOKENS, _answer, _teacher_forced_agreement
from bench.replicas import replica_rss_mb
from bench.report import Figure, Stat, Target

REPO = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "Tell me about the history of Paris in a few paragraphs."}]
LONG_PROMPT_TOKENS = 540
STREAMS = 8
ENGINES = {"torch int4 (engine: batched)": ("int4", "batched"), "onnx int4 (engine: onnx)": ("int4", "onnx")}
LLAMA_CPP = {"llama.cpp Q4_1": False, "llama.cpp Q4_1, flash attention": True}
API = "Chorus API stream (served default)"
TARGET_DECODE = 1.2  # API streamed decode vs llama.cpp at equal threads
TARGET_STREAMS = 4.0  # 8 streams' aggregate vs one stream
TARGET_PREFILL = 0.6  # prefill time vs llama.cpp's
TARGET_AGREEMENT = 95.0
TARGET_RSS_MB = 600.0
LONG_TEXT = (
    "I am writing about order 4471 again. The parcel was due last Tuesday and the tracking page has "
    "said 'label created' for nine days. I called twice and was told to wait. My daughter's birthday "
    "is on Saturday and the present is in that box. "
)


def _long_text(runtime) -> str:
    """A user message whose chat prompt is ~540 tokens, never sent before (a new ticket number first:
    our prefix cache reuses the system prompt's 24 tokens, as for any new chat, and nothing more;
    llama.cpp is reset between runs)."""
    overhead = len(runtime.chat_template([{"role": "user", "content": ""}]))
    content = runtime.tokenizer.encode(new_question(LONG_TEXT * 12), add_special_tokens=False)
    if len(content) < LONG_PROMPT_TOKENS - overhead:
        raise RuntimeError(f"the long prompt is only {len(content) + overhead} tokens")
    return runtime.tokenizer.decode(content[: LONG_PROMPT_TOKENS - overhead])


def _long_ids(runtime) -> list[int]:
    return runtime.chat_template([{"role": "user", "content": _long_text(runtime)}])


def _prefill_s(runtime, ids: list[int]) -> float:
    start = time.perf_counter()
    for _ in runtime.stream(input_ids=ids, params=greedy(1)):
        pass
    return time.perf_counter() - start


def _stream_prompts(runtime) -> list[list[int]]:
    """8 chat prompts never sent before (new ticket numbers): the prefix cache reuses the system prompt only."""
    return [runtime.chat_template([{"role": "user", "content": new_question("Where is my parcel?")}]) for _ in range(STREAMS)]


def _streams_tok_s(runtime, new_tokens: int) -> float:
    """8 distinct prompts at once: every token / wall time from the first submission to the last token."""
    prompts = _stream_prompts(runtime)
    counts = [0] * STREAMS
    start = time.perf_counter()
    streams = [runtime.stream(input_ids=ids, params=greedy(new_tokens)) for ids in prompts]

    def drain(i: int) -> None:
        for _ in streams[i]:
            counts[i] += 1

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def _llama_streams_tok_s(batch: LlamaCppBatch, runtime, new_tokens: int) -> float:
    seconds, tokens = batch.run(_stream_prompts(runtime), new_tokens)
    return sum(map(len, tokens)) / seconds


def _onnx_teacher_forced(runtime, prompts: list[list[int]], references: list[list[int]]) -> float:
    forward = runtime.decode_loop.forward
    agree = total = 0
    for ids, ref in zip(prompts, references):
        logits = forward.score(runtime.embed(ids + ref[:-1]).unsqueeze(0))[len(ids) - 1 :]
        agree += sum(int(p) == r for p, r in zip(logits.argmax(dim=-1).tolist(), ref))
        total += len(ref)
    return 100.0 * agree / total


# Peak RSS from the kernel's high-water mark of this process's memory (VmHWM): ru_maxrss would
# carry the parent's peak over the exec.
_RSS_SCRIPT = """
import json, sys
engine = json.loads(sys.argv[1])
if engine["kind"] == "llama.cpp":
    from bench.llama_cpp_ref import LlamaCppDecoder
    decoder = LlamaCppDecoder(engine["threads"], flash_attn=engine["flash_attn"])
    decoder.stamps(list(range(1, 47)), 32)
else:
    from modalities.llm import LLMConfig, LLMRuntime, SamplingParams
    runtime = LLMRuntime.from_config(LLMConfig(quantization=engine["quantization"], engine=engine["kind"],
                                               threads=engine["threads"]))
    runtime.generate(input_ids=runtime.chat_template([{"role": "user", "content": "Hi"}]),
                     params=SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024, "rss_mb": int(status["VmRSS"].split()[0]) / 1024}))
"""


def _peak_rss_mb(engine: dict) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, json.dumps(engine)], cwd=REPO, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _api(fp32, ids_text: str, new_tokens: int, repeats: int) -> dict:
    """The served default over HTTP: decode rate, long-prompt TTFT, 8 streams, the decoder replica's RSS."""
    from bench.service import decoder_threads, start_service, stop_service
    from serve.ports import free_port

    base, args = start_service(free_port())
    client = httpx.Client(timeout=300)
    out: dict = {"threads": decoder_threads(args), "engine": args["llm"].get("engine"), "decode": [], "prefill": [], "streams": []}

    def chat(content: str, max_tokens: int) -> tuple[float, list[float], int]:
        body = {"model": "chorus", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        stamps, used = [], 0
        start = time.perf_counter()
        with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    used = chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    stamps.append(time.perf_counter())
        return start, stamps, used

    try:
        chat(ids_text, 8)  # warm
        for _ in range(repeats):
            _, stamps, used = chat(ids_text, new_tokens)
            out["decode"].append((used - 1) / (stamps[-1] - stamps[0]))
            start, stamps, _ = chat(_long_text(fp32), 1)
            out["prefill"].append(stamps[0] - start if stamps else time.perf_counter() - start)
            counts: list[int] = [0] * STREAMS
            begin = time.perf_counter()

            def one(i: int, counts: list[int] = counts) -> None:
                counts[i] = chat(new_question("Where is my parcel?"), new_tokens)[2]

            threads = [threading.Thread(target=one, args=(i,)) for i in range(STREAMS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            out["streams"].append(sum(counts) / (time.perf_counter() - begin))
        out["decoder_rss_mb"] = replica_rss_mb().get("LLMDecoder")
    finally:
        client.close()
        stop_service()
    return out


def section_engines(ctx: BenchContext) -> None:  # noqa: C901 - one table, built row by row
    opts, report = ctx.options, ctx.report
    repeats = 2 if opts.quick else opts.repeats
    new_tokens = 32 if opts.quick else 128
    fp32 = ctx.runtime("none", "batched")
    ids, long_ids = fp32.chat_template(PROMPT), _long_ids(fp32)
    runtimes = {name: ctx.runtime(q, e) for name, (q, e) in ENGINES.items()}
    llamas: dict[str, LlamaCppDecoder] = {}
    why = ""
    try:
        llamas = {name: LlamaCppDecoder(opts.threads, flash_attn=flash) for name, flash in LLAMA_CPP.items()}
        batch = LlamaCppBatch(opts.threads, STREAMS)
    except ImportError:
        why = NOT_INSTALLED
    rows = [*llamas, *runtimes]
    decode: dict[str, list[float]] = {r: [] for r in rows}
    prefill: dict[str, list[float]] = {r: [] for r in rows}
    streams: dict[str, list[float]] = {r: [] for r in rows}
    for runtime in runtimes.values():
        stream_stamps(runtime, ids, 8)
    for _ in range(repeats):
        for name, llama in llamas.items():
            stamps, _ = llama.stamps(ids, new_tokens)
            decode[name].append(decode_rate(stamps))
            start = time.perf_counter()
            llama.stamps(_long_ids(fp32), 1)
            prefill[name].append(time.perf_counter() - start)
        if llamas:
            streams[next(iter(llamas))].append(_llama_streams_tok_s(batch, fp32, new_tokens))
        for name, runtime in runtimes.items():
            decode[name].append(decode_rate(stream_stamps(runtime, ids, new_tokens)[1]))
            prefill[name].append(_prefill_s(runtime, _long_ids(fp32)))
            streams[name].append(_streams_tok_s(runtime, new_tokens))
    if llamas:
        batch.close()

    n_prompts, agreement_tokens = (2, 16) if opts.quick else (len(AGREEMENT_PROMPTS), AGREEMENT_TOKENS)
    prompts = [fp32.chat_template([{"role": "user", "content": p}]) for p in AGREEMENT_PROMPTS[:n_prompts]]
    references = [fp32.generate(input_ids=p, params=_answer(agreement_tokens)).token_ids for p in prompts]
    agreement: dict[str, float] = {}
    for name, runtime in runtimes.items():
        onnx = ENGINES[name][1] == "onnx"
        agreement[name] = (_onnx_teacher_forced if onnx else _teacher_forced_agreement)(runtime, prompts, references)
    for name, llama in llamas.items():
        agree = total = 0
        for p, ref in zip(prompts, references):
            _, theirs = llama.stamps(p, len(ref))
            agree += sum(a == b for a, b in zip(theirs, ref))
            total += len(ref)
        agreement[name] = 100.0 * agree / total

    rss: dict[str, float] = {}
    for name, (quantization, engine) in ENGINES.items():
        rss[name] = _peak_rss_mb({"kind": engine, "quantization": quantization, "threads": opts.threads})
    for name, flash in LLAMA_CPP.items():
        if llamas:
            rss[name] = _peak_rss_mb({"kind": "llama.cpp", "threads": opts.threads, "flash_attn": flash})

    ctx.log(f"[engines] direct: decode {decode}, prefill {prefill}, streams {streams}, agreement {agreement}, rss {rss}")
    torch.set_num_threads(opts.threads)
    api = _api(fp32, PROMPT[0]["content"], new_tokens, repeats)
    decode[API], prefill[API], streams[API] = api["decode"], api["prefill"], api["streams"]
    if api.get("decoder_rss_mb"):
        rss[API] = api["decoder_rss_mb"]
    ref = next(iter(llamas), None)

    def vs_llama(values: dict[str, list[float]], name: str) -> tuple[Stat | None, str]:
        return (Stat.of(values[ref]), ref) if ref else (None, why)

    for name in [*rows, API]:
        base, base_name = vs_llama(decode, name)
        target = Target(">=", TARGET_DECODE) if name == API else None
        report.add(Figure("engines", f"decode tok/s, {name}", "tok/s", Stat.of(decode[name]), base, base_name, target))
        base, base_name = vs_llama(prefill, name)
        target = Target("<=", TARGET_PREFILL) if name in (API, *runtimes) else None
        report.add(Figure("engines", f"prefill {LONG_PROMPT_TOKENS} tokens, {name}", "s", Stat.of(prefill[name]), base,
                          base_name, target))
        if streams[name]:
            one = median_of(decode[name])
            report.add(Figure("engines", f"{STREAMS} streams aggregate tok/s, {name}", "tok/s", Stat.of(streams[name]),
                              Stat.exact(one), "its own one-stream decode tok/s", Target(">=", TARGET_STREAMS)))
        if name in agreement:
            report.add(Figure("engines", f"greedy agreement with fp32, {name}", "%", Stat.exact(agreement[name]), None,
                              "fp32 greedy answers", Target(">=", TARGET_AGREEMENT, on="value"),
                              note="free-running (its own tokens)" if name in llamas else "teacher-forced"))
        if name in rss:
            report.add(Figure("engines", f"peak RSS, {name}", "MB", Stat.exact(rss[name]), None, "",
                              Target("<=", TARGET_RSS_MB, on="value")))
    report.sections["engines"] = {
        "threads": opts.threads, "api_decoder_threads": api["threads"], "api_engine": api["engine"],
        "prompt_tokens": len(ids), "long_prompt_tokens": len(long_ids), "new_tokens": new_tokens, "repeats": repeats,
        "decode": decode, "prefill": prefill, "streams": streams, "agreement_pct": agreement, "rss_mb": rss,
        "agreement_prompts": n_prompts, "agreement_tokens": agreement_tokens,
    }  # fmt: skip
