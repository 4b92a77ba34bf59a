"""Whisper adaptive window vs the full 30-s window, on the packaged Whisper base.

    .venv/bin/python bench/whisper_window.py [--repeats 7] [--threads 2] [--naive]

Measures, side by side in one run (the machines are shared and noisy, so ratios matter, not
absolute seconds):

- preparing the packaged weights (cold conversion, then the idempotent re-check) and loading them;
- encoder time for a ~5 s clip: full window vs adaptive (real-length frames), median of repeats;
- transcription of the espeak-ng customer-service corpus: time per clip and corpus WER for the full
  window and the adaptive window with several silence margins (0 s relies on the token cap and the
  repeated-segment clean-up alone; `--naive` adds 0 s without the cap, where the decoder repeats
  itself up to whisper's 224-token limit per window).

Prints a markdown table and writes bench/results/whisper_window.json. `chorus bench --only encoders`
reuses `encoder_times` (2/5/10/30 s clips) and `bench_transcribe` (full vs the default adaptive window).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import jiwer
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modalities.audio import weights as whisper_weights  # noqa: E402
from modalities.audio.whisper import WhisperConfig, WhisperRuntime  # noqa: E402
from modalities.speech.espeak import SAMPLE_VOICES, sample_corpus  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "whisper_window.json"
ENCODER_CLIP_SECONDS = 5.0
# name -> config overrides; "full" is the reference every ratio is taken against
VARIANTS: dict[str, dict] = {
    "full window": {"adaptive_window": False},
    "adaptive, 5 s margin": {"adaptive_window": True, "adaptive_margin_s": 5.0},
    "adaptive, 2 s margin": {"adaptive_window": True, "adaptive_margin_s": 2.0},
    "adaptive, 0 s margin (token cap + de-dup only)": {"adaptive_window": True, "adaptive_margin_s": 0.0},
}
NAIVE = {"adaptive, 0 s margin, no cap (de-dup only)": {"adaptive_window": True, "adaptive_margin_s": 0.0, "max_tokens_per_second": None}}


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_weights(repeats: int) -> dict:
    prepare_cold, path = timed(lambda: whisper_weights.prepare_whisper(force=True))
    prepare_warm = statistics.median(timed(whisper_weights.prepare_whisper)[0] for _ in range(repeats))
    import whisper

    load = statistics.median(timed(lambda: whisper.load_model(str(path), device="cpu"))[0] for _ in range(3))
    return {
        "checkpoint": str(path),
        "checkpoint_mb": round(path.stat().st_size / 1e6, 1),
        "prepare_cold_s": round(prepare_cold, 2),
        "prepare_again_s": round(prepare_warm, 3),
        "load_s": round(load, 2),
    }


def encoder_times(model, clip, repeats: int) -> dict[str, list[float]]:
    """Encoder seconds for one clip, full 30-s window vs adaptive, interleaved over `repeats`."""
    runtimes = {
        "full": WhisperRuntime(model, WhisperConfig(device="cpu", adaptive_window=False)),
        "adaptive": WhisperRuntime(model, WhisperConfig(device="cpu", adaptive_window=True)),
    }
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for rt in runtimes.values():
        rt.encode(clip)  # warm-up
    for _ in range(repeats):
        for name, rt in runtimes.items():  # interleaved, so load changes hit both alike
            times[name].append(timed(lambda rt=rt: rt.encode(clip))[0])
    return times


def bench_encoder(model, corpus, repeats: int) -> dict:
    text, clip = min(corpus, key=lambda item: abs(len(item[1]) / 16_000 - ENCODER_CLIP_SECONDS))
    times = encoder_times(model, clip, repeats)
    adaptive_rt = WhisperRuntime(model, WhisperConfig(device="cpu", adaptive_window=True))
    full, adaptive = (statistics.median(times[n]) for n in ("full", "adaptive"))
    return {
        "clip_s": round(len(clip) / 16_000, 2),
        "text": text,
        "frames": int(adaptive_rt.encode(clip).shape[0]),
        "full_s": round(full, 4),
        "adaptive_s": round(adaptive, 4),
        "speedup": round(full / adaptive, 2),
        "all_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
    }


def bench_transcribe(model, corpus, variants: dict[str, dict]) -> dict:
    runtimes = {name: WhisperRuntime(model, WhisperConfig(device="cpu", **cfg)) for name, cfg in variants.items()}
    runtimes["full window"].transcribe(corpus[0][1])  # warm-up
    per_clip: dict[str, list[dict]] = {name: [] for name in runtimes}
    names = list(runtimes)
    for i, (text, clip) in enumerate(corpus):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            seconds, transcript = timed(lambda name=name, clip=clip: runtimes[name].transcribe(clip))
            per_clip[name].append({"seconds": round(seconds, 3), "reference": text, "hypothesis": transcript.text})
    out = {}
    full_median = statistics.median(r["seconds"] for r in per_clip["full window"])
    for name, rows in per_clip.items():
        median = statistics.median(r["seconds"] for r in rows)
        out[name] = {
            "config": variants[name],
            "wer": round(jiwer.wer([normalize(r["reference"]) for r in rows], [normalize(r["hypothesis"]) for r in rows]), 4),
            "median_s_per_clip": round(median, 3),
            "mean_s_per_clip": round(statistics.mean(r["seconds"] for r in rows), 3),
            "speedup_vs_full": round(full_median / median, 2),
            "clips": rows,
        }
    return out


def markdown(result: dict) -> str:
    w, e = result["weights"], result["encoder"]
    lines = [
        f"Whisper base (packaged), CPU, {result['env']['torch_threads']} threads, "
        f"{len(result['corpus'])} espeak-ng clips ({result['corpus_seconds']['min']}-{result['corpus_seconds']['max']} s)",
        "",
        "| step | time |",
        "| --- | --- |",
        f"| prepare (join + convert + save, cold) | {w['prepare_cold_s']} s |",
        f"| prepare again (SHA check only) | {w['prepare_again_s']} s |",
        f"| load converted checkpoint | {w['load_s']} s |",
        f"| encoder, {e['clip_s']} s clip, full 30-s window | {e['full_s'] * 1000:.0f} ms |",
        f"| encoder, {e['clip_s']} s clip, adaptive ({e['frames']} frames) | {e['adaptive_s'] * 1000:.0f} ms ({e['speedup']}x faster) |",
        "",
        "| transcription | corpus WER | median s/clip | mean s/clip | speed-up vs full (median) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in result["transcribe"].items():
        lines.append(
            f"| {name} | {r['wer'] * 100:.1f} % | {r['median_s_per_clip']:.2f} | {r['mean_s_per_clip']:.2f} "
            f"| {r['speedup_vs_full']}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="repeats for the encoder and prepare medians")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--naive", action="store_true", help="also run adaptive with no margin and no token cap (slow)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    weights = bench_weights(args.repeats)
    model = whisper_weights.load_packaged_whisper("cpu")
    corpus = sample_corpus()
    durations = [len(clip) / 16_000 for _, clip in corpus]
    variants = {**VARIANTS, **(NAIVE if args.naive else {})}
    result = {
        "env": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "loadavg_start": [round(x, 2) for x in load_before],
        },
        "weights": weights,
        "corpus": [{"text": t, "seconds": round(d, 2)} for (t, _), d in zip(corpus, durations)],
        "voices": [list(v) for v in SAMPLE_VOICES],
        "corpus_seconds": {"min": round(min(durations), 1), "max": round(max(durations), 1)},
        "encoder": bench_encoder(model, corpus, args.repeats),
        "transcribe": bench_transcribe(model, corpus, variants),
    }
    result["env"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nload average {result['env']['loadavg_start'][0]} -> {result['env']['loadavg_end'][0]} "
          f"(shared machine); wrote {args.out}")


if __name__ == "__main__":
    main()
