"""Time to first token through the HTTP API vs calling the runtimes directly, in one run.

    .venv/bin/python bench/api_ttft.py [--repeats 5]

Two requests, each measured both ways (median of repeats, same process, same machine):

- text only: a short customer question;
- a 5 s spoken question (espeak-ng) plus text, `transcript` fusion: Whisper transcribes, the
  transcript goes into the prompt, the LLM streams.

"direct" = WhisperRuntime/LLMRuntime called in this process with deploy/local.yaml's model
settings (int4 LLM) and the thread count the decoder replica uses; "API" = a real Serve app from
deploy/local.yaml (on a free port), streaming over HTTP. Every spoken request sends new bytes (one
PCM byte changed), so the audio encoder's feature cache never answers for the API path. The ratio
API/direct is the serving overhead (Ray hops, HTTP, SSE). Writes bench/results/api_ttft.json and
prints a markdown table. The measuring functions live in bench/service.py, which
`chorus bench --only service` also runs (text only, plus inter-token latency).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.context import new_question  # noqa: E402
from bench.encoders import byte_variants  # noqa: E402
from bench.service import (  # noqa: E402
    PROMPT_TEXT,
    QUESTION,
    SPOKEN,
    api_stamps,
    decoder_threads,
    direct_stamps,
    free_port,
    start_service,
    stop_service,
    ttft,
)
from modalities.audio import WhisperConfig, WhisperRuntime  # noqa: E402
from modalities.llm import LLMConfig, LLMRuntime  # noqa: E402
from modalities.speech import synthesize, to_wav_bytes  # noqa: E402

RESULTS = REPO / "bench" / "results" / "api_ttft.json"
TTFT_TOKENS = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    wav = to_wav_bytes(synthesize(SPOKEN, speed_wpm=175))
    seconds = (len(wav) - 44) / 2 / 16_000

    def spoken_content(audio: bytes, text: str) -> list[dict]:
        return [
            {"type": "text", "text": text},
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode(), "format": "wav"}},
        ]

    base, service_args = start_service(free_port())
    threads = decoder_threads(service_args)
    torch.set_num_threads(threads)
    whisper_rt = WhisperRuntime.from_config(WhisperConfig(**{**service_args["whisper"], "threads": 1}))
    llm = LLMRuntime.from_config(LLMConfig(**{**service_args["llm"], "threads": threads}))  # as the replica
    fresh = iter(byte_variants(wav, 2 * args.repeats + 4, offset=len(wav) - 2))  # one per spoken request

    rows = {}
    for name, spoken in (("text only", False), (f"{seconds:.1f} s speech + text", True)):
        # Every request a new text (and new audio bytes): only the system prompt comes from the
        # prefix caches, on both sides, as for any new chat.
        def run_direct(spoken: bool = spoken) -> float:
            text = new_question(PROMPT_TEXT if spoken else QUESTION)
            return ttft(*direct_stamps(llm, text, TTFT_TOKENS, whisper_rt, next(fresh) if spoken else None))

        def run_api(spoken: bool = spoken) -> float:
            text = new_question(PROMPT_TEXT if spoken else QUESTION)
            return ttft(*api_stamps(base, spoken_content(next(fresh), text) if spoken else text, TTFT_TOKENS))

        direct, api = [], []
        run_direct(), run_api()  # warm-up both paths
        for _ in range(args.repeats):  # interleaved so drift in machine load hits both alike
            direct.append(run_direct())
            api.append(run_api())
        d, a = statistics.median(direct), statistics.median(api)
        rows[name] = {"direct_s": round(d, 3), "api_s": round(a, 3), "ratio": round(a / d, 2), "direct": direct, "api": api}

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"repeats": args.repeats, "llm_threads": threads, "rows": rows}, indent=2))
    print("| request | direct TTFT (s) | API TTFT (s) | API / direct |")
    print("| --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['direct_s']} | {row['api_s']} | {row['ratio']} |")
    stop_service()
    return 0


if __name__ == "__main__":
    sys.exit(main())
