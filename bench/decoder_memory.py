"""Decoder-process memory around long prompts: RSS warm idle, after long prompts cancelled
mid-prefill, and after long prompts run to completion (the packaged SmolLM2-135M, batched engine).

    .venv/bin/python bench/decoder_memory.py [--prompts 6] [--words 3000] [--cancel-after 2.0]
        [--new-tokens 16] [--quantization int4] [--threads 1] [--no-trim] [--prefix-cache-mib M] [--src DIR]

A plain Python process (no Ray), the served default engine (`LLMConfig`'s defaults but for the
quantization and threads given). Phases, each ending once the engine holds no request and the
process has settled for `--settle` seconds:

1. warm: two short chats ("hi"), then idle: the baseline RSS;
2. cancel: `--prompts` distinct prompts of about `--words` words each go in at once and are all
   cancelled `--cancel-after` seconds later (mid-prefill); `cancel_to_idle_s` is the time from the
   cancellation to an engine with nothing queued or running;
3. complete: the same number of other long prompts run to completion (`--new-tokens` each);
4. a short chat after it all: its time (the engine is free again).

Peak RSS is sampled every 20 ms. Requests go straight to the engine (`decode_loop.run`, cancelled
from the main thread) so that an older revision, whose runtime stream had no thread-safe cancel, can
be measured the same way: `--src DIR` imports `modalities` from DIR (e.g. `git archive REV modalities
| tar -x -C DIR`). Prints one JSON object (MB are 10^6 bytes).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
WORDS = (
    "parcel delivery depot driver route customer address package courier warehouse invoice order "
    "shipment tracking weather morning evening river bridge station market garden window letter "
    "the a of and to in is was for on with as by at from that this which it be are were has had "
    "not but or an they we you he she their our your his her its one two three many some every "
    "late early quickly slowly carefully again before after during while because although if when"
).split()


def long_prompt(seed: int, words: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    sentences, count = [], 0
    while count < words:
        n = rng.randint(8, 18)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
        count += n
    text = f"Document {seed}. " + " ".join(sentences)
    return [{"role": "user", "content": f"{text}\n\nSummarise the document above in one sentence."}]


class PeakSampler(threading.Thread):
    def __init__(self, process: psutil.Process, every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.process, self.every_s, self.peak = process, every_s, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--words", type=int, default=3000)
    parser.add_argument("--cancel-after", type=float, default=2.0, help="seconds after submitting (mid-prefill)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--quantization", default="int4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds idle before each RSS reading")
    parser.add_argument("--no-trim", action="store_true", help="never call malloc_trim (to see what it buys)")
    parser.add_argument("--prefix-cache-mib", type=float, default=None, help="default: LLMConfig's")
    parser.add_argument("--src", type=Path, default=REPO, help="directory to import modalities from")
    args = parser.parse_args()
    sys.path.insert(0, str(args.src.resolve()))

    import torch

    from modalities.llm.config import LLMConfig
    from modalities.llm.params import SamplingParams
    from modalities.llm.runtime import LLMRuntime

    process = psutil.Process()
    mb = lambda: round(process.memory_info().rss / 1e6, 1)  # noqa: E731
    figures: dict[str, object] = {"src": str(args.src.resolve()), "args": {k: str(v) for k, v in vars(args).items()}}
    if args.no_trim:
        from modalities.llm.engine import batched

        batched.trim_heap = lambda: False
    overrides = {} if args.prefix_cache_mib is None else {"prefix_cache_mib": args.prefix_cache_mib}
    config = LLMConfig(model="packaged", quantization=args.quantization, threads=args.threads, **overrides)
    runtime = LLMRuntime.from_config(config)
    engine = runtime.decode_loop
    greedy = SamplingParams(temperature=0, max_tokens=args.new_tokens)
    figures["rss_loaded_mb"] = mb()

    submitted = 0

    def submit(messages):
        nonlocal submitted
        submitted += 1
        ids = runtime.chat_template(messages)
        embeds = runtime.embed(torch.tensor(ids)).unsqueeze(0)
        return len(ids), engine.run(embeds, greedy, args.new_tokens, runtime.eos_token_ids)

    def idle() -> bool:
        # `completed` too: an older engine's stats did not count the prompts it was prefilling.
        stats = engine.stats()
        return stats.completed >= submitted and stats.active == stats.queued == getattr(stats, "prefilling", 0) == 0

    def wait_idle(timeout: float = 3600.0) -> float:
        start = time.perf_counter()
        while not idle():
            if time.perf_counter() - start > timeout:
                raise TimeoutError("the engine never went idle")
            time.sleep(0.01)
        return round(time.perf_counter() - start, 2)

    def settled() -> float:
        gc.collect()
        time.sleep(args.settle)
        return mb()

    def chat_s() -> float:
        start = time.perf_counter()
        _, tokens = submit([{"role": "user", "content": "hi"}])
        list(tokens)
        return round(time.perf_counter() - start, 2)

    chat_s()
    chat_s()
    wait_idle()
    figures["rss_warm_idle_mb"] = settled()
    sampler = PeakSampler(process)
    sampler.start()

    streams = [submit(long_prompt(seed, args.words)) for seed in range(args.prompts)]
    figures["prompt_tokens"] = [n for n, _ in streams]
    time.sleep(args.cancel_after)
    before = engine.stats().prompt_tokens
    for _, tokens in streams:
        getattr(tokens, "cancel", tokens.close)()
    figures["cancel_to_idle_s"] = wait_idle()
    figures["cancel_prompt_tokens_prefilled"] = engine.stats().prompt_tokens - before
    del streams, tokens
    figures["rss_after_cancel_mb"] = settled()

    start = time.perf_counter()
    streams = [submit(long_prompt(100 + seed, args.words)) for seed in range(args.prompts)]
    produced = [len(list(tokens)) for _, tokens in streams]
    figures["complete_s"] = round(time.perf_counter() - start, 1)
    figures["complete_tokens"] = produced
    wait_idle()
    del streams
    figures["rss_after_complete_mb"] = settled()
    figures["rss_peak_mb"] = round(sampler.stop() / 1e6, 1)
    figures["short_chat_after_s"] = chat_s()
    wait_idle()
    figures["rss_end_mb"] = settled()
    figures["growth_after_cancel_mb"] = round(figures["rss_after_cancel_mb"] - figures["rss_warm_idle_mb"], 1)
    figures["growth_after_complete_mb"] = round(figures["rss_after_complete_mb"] - figures["rss_warm_idle_mb"], 1)
    stats = engine.stats()
    figures["engine"] = {k: getattr(stats, k) for k in ("completed", "prompt_tokens", "prefix_cache_bytes")}
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
