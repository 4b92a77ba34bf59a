"""Time to first token through the HTTP API vs calling the runtimes directly, in one run.

    .venv/bin/python bench/api_ttft.py [--repeats 5]

Two requests, each measured both ways (median of repeats, same process, same machine):

- text only: a short customer question;
- a 5 s spoken question (espeak-ng) plus text, `transcript` fusion: Whisper transcribes, the
  transcript goes into the prompt, the LLM streams.

"direct" = WhisperRuntime/LLMRuntime called in this process with the same thread count the
decoder replica uses; "API" = a real Serve app from deploy/local.yaml (on a free port), streaming
over HTTP. The ratio API/direct is the serving overhead (Ray hops, HTTP, SSE). Writes
bench/results/api_ttft.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion.prompt import MediaItem, Message, build_prompt  # noqa: E402
from modalities.espeak import synthesize, to_wav_bytes  # noqa: E402
from modalities.llm import LLMConfig, LLMRuntime, SamplingParams  # noqa: E402
from modalities.speech import WhisperConfig, WhisperRuntime  # noqa: E402

RESULTS = REPO / "bench" / "results" / "api_ttft.json"
QUESTION = "My parcel has not arrived. What should I do?"
SPOKEN = "Hello, I ordered running shoes ten days ago and the tracking page has not changed."
PROMPT_TEXT = "Answer this caller briefly:"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def direct_ttft(whisper_rt: WhisperRuntime, llm: LLMRuntime, audio) -> float:
    start = time.perf_counter()
    parts: list = [PROMPT_TEXT if audio is not None else QUESTION]
    if audio is not None:
        transcript = whisper_rt.transcribe(whisper_rt.decode(audio)).text
        parts.append(MediaItem("audio", 0, transcript))
    plan = build_prompt([Message("user", parts)], llm.tokenizer, audio_mode="transcript")
    stream = llm.stream(input_ids=plan.token_ids(), params=SamplingParams(temperature=0, max_tokens=8))
    next(stream)
    elapsed = time.perf_counter() - start
    stream.close()
    return elapsed


def api_ttft(base: str, audio_b64: str | None) -> float:
    if audio_b64 is None:
        content: object = QUESTION
    else:
        content = [
            {"type": "text", "text": PROMPT_TEXT},
            {"type": "input_audio", "input_audio": {"data": audio_b64, "format": "wav"}},
        ]
    body = {
        "model": "chorus",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "chorus": {"fusion": "transcript"},
    }
    start = time.perf_counter()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - start
    raise RuntimeError("stream ended without content")


def start_service(port: int):
    import ray
    from ray import serve

    from serve.app import build_app

    config = yaml.safe_load((REPO / "deploy" / "local.yaml").read_text())
    args = config["applications"][0]["args"]
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="chorus", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=10).status_code == 200:
                return base, args
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("service did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    wav = to_wav_bytes(synthesize(SPOKEN, speed_wpm=175))
    seconds = (len(wav) - 44) / 2 / 16_000
    audio_b64 = base64.b64encode(wav).decode()

    base, service_args = start_service(free_port())
    # the decoder replica's threads: its config's, else its CPU claim (serve/deployments.py)
    threads = int(service_args["llm"].get("threads") or service_args["deployments"]["llm_decoder"]["num_cpus"])
    torch.set_num_threads(threads)
    whisper_rt = WhisperRuntime.from_config(WhisperConfig(threads=1))
    llm = LLMRuntime.from_config(LLMConfig(threads=threads))

    rows = {}
    for name, audio, b64 in (("text only", None, None), (f"{seconds:.1f} s speech + text", wav, audio_b64)):
        direct, api = [], []
        direct_ttft(whisper_rt, llm, audio), api_ttft(base, b64)  # warm-up both paths
        for _ in range(args.repeats):  # interleaved so drift in machine load hits both alike
            direct.append(direct_ttft(whisper_rt, llm, audio))
            api.append(api_ttft(base, b64))
        d, a = statistics.median(direct), statistics.median(api)
        rows[name] = {"direct_s": round(d, 3), "api_s": round(a, 3), "ratio": round(a / d, 2), "direct": direct, "api": api}

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"repeats": args.repeats, "llm_threads": threads, "rows": rows}, indent=2))
    print("| request | direct TTFT (s) | API TTFT (s) | API / direct |")
    print("| --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['direct_s']} | {row['api_s']} | {row['ratio']} |")

    from ray import serve

    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
