"""The decoder's intra-op threads by measurement: the served engine at 1 and 2 threads, encoders idle and busy.

    .venv/bin/python bench/decoder_threads.py [--engine onnx] [--repeats 3] [--new-tokens 96]

"Busy" runs the packaged Whisper in another process, transcribing a clip over and over (one torch
thread, as its replica in deploy/local.yaml), the way the audio encoder competes with the decoder
under `make serve` while voice notes arrive. For each (threads, load): one stream's decode tok/s
and 8 streams' aggregate tok/s, medians over the repeats, rounds alternating between thread counts.
Writes bench/results/decoder_threads.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "decoder_threads.json"
BUSY_SCRIPT = """
import numpy as np, torch
torch.set_num_threads(1)
from modalities.audio import WhisperConfig, WhisperRuntime
rt = WhisperRuntime.from_config(WhisperConfig(model="packaged", threads=1))
audio = (np.random.default_rng(0).standard_normal(16000 * 8) * 0.05).astype(np.float32)
print("ready", flush=True)
while True:
    rt.transcribe(audio)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="onnx", choices=["onnx", "batched"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=96)
    args = parser.parse_args()

    import torch

    from bench.context import decode_rate, stream_stamps
    from bench.engines import PROMPT, _streams_tok_s
    from modalities.llm import LLMConfig, LLMRuntime

    runtimes = {
        threads: LLMRuntime.from_config(LLMConfig(engine=args.engine, quantization="int4", threads=threads))
        for threads in (1, 2)
    }
    ids = runtimes[1].chat_template(PROMPT)
    figures: dict[str, dict[str, list[float]]] = {}
    for load in ("idle", "busy"):
        busy = None
        if load == "busy":
            busy = subprocess.Popen([sys.executable, "-c", BUSY_SCRIPT], cwd=REPO, stdout=subprocess.PIPE, text=True)
            assert busy.stdout is not None and busy.stdout.readline().strip() == "ready"
        try:
            for _ in range(args.repeats):
                for threads, runtime in runtimes.items():
                    torch.set_num_threads(threads)
                    row = figures.setdefault(f"{threads} thread(s), encoders {load}", {"decode": [], "streams": []})
                    row["decode"].append(decode_rate(stream_stamps(runtime, ids, args.new_tokens)[1]))
                    row["streams"].append(_streams_tok_s(runtime, args.new_tokens))
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    print(f"| {args.engine} engine | 1 stream tok/s | 8 streams tok/s |\n|---|---|---|")
    for name, row in figures.items():
        print(f"| {name} | {statistics.median(row['decode']):.1f} | {statistics.median(row['streams']):.1f} |")
    RESULTS.write_text(json.dumps({"engine": args.engine, "new_tokens": args.new_tokens, "repeats": args.repeats,
                                   "cpus": len(os.sched_getaffinity(0)), "loadavg_end": os.getloadavg()[0],
                                   "time": time.strftime("%Y-%m-%d %H:%M"), "figures": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
