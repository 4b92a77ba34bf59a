"""Embed vs transcript fusion: time to first token for a 5 s spoken question, side by side in one run.

    .venv/bin/python -m bench.fusion_ttft [--pairs 8] [--url http://127.0.0.1:8000]

Target: embed mode's TTFT ≤ 0.6× transcript mode's. Embed sends Whisper's encoder features through the
audio projector (12.5 soft tokens/s: ~63 for 5 s) and skips Whisper's decoding; transcript decodes
the clip with Whisper and prompts with the text.

A real Serve app from deploy/local.yaml (started here on a free port, with a store of its own; or
`--url`) gets streamed chat completions whose only content is an `input_audio` part: a customer
question spoken by hibari (voice heart, speed 1.0, 16 kHz), padded with silence / cut in its trailing
silence to exactly 5.0 s, as WAV. `max_tokens` 8, temperature 0, `chorus.fusion` "embed" or
"transcript". Requests go in pairs, one per mode on the same sentence, the order flipping every pair
(embed first, then transcript first) so drift in machine load hits both alike; one warm-up pair is
not counted. Every pair speaks a different sentence and every request sends new bytes (one PCM byte
changed): the encoder's feature cache never answers, and neither mode's prompt repeats an earlier one
past the system prompt, so the LLM's prefix cache reuses only that (a repeated transcript would
otherwise come from it whole). TTFT = request sent → first SSE chunk carrying content, over a
kept-alive connection. The response's `Server-Timing` splits it (`prep`: ingress until the decoder
call, the encoders included; `decoder`: decoder replica until its first token). The projector the
app loaded (deploy/local.yaml's `fusion.audio_projector`, its projector.json) is recorded; TTFT
depends on its number of soft tokens, hardly on its weights.

Writes bench/results/fusion/ttft.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench.encoders import byte_variants
from bench.service import parse_server_timing

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "deploy" / "local.yaml"
DEFAULT_OUT = REPO / "bench" / "results" / "fusion" / "ttft.json"
SAMPLE_RATE = 16_000
CLIP_S = 5.0
MAX_TRIM_S = 0.3  # hibari ends each clip with ~0.4-0.55 s of silence: a cut this short never reaches speech
MAX_TOKENS = 8
MAX_RATIO = 0.6  # embed TTFT / transcript TTFT
MODES = ("embed", "transcript")
TIMEOUT_S = 120
VOICE = ("hibari", "heart")
# Held out (written for this bench): each 4.1-5.3 s as hibari heart speaks it at speed 1.0.
QUESTIONS = (
    "My parcel was marked as delivered, but nothing arrived at my door.",
    "I was charged twice for my order last week. Can you refund one payment?",
    "The blender I bought stopped working after two days. Can I return it?",
    "I never received the confirmation email for my booking this morning.",
    "Hello, my new headphones arrived with a cracked case. What should I do?",
    "Can you tell me why my account was locked after I changed my password?",
    "I ordered a blue jacket, but the one in the box is green. Can you help?",
    "My discount code was not applied at checkout. Can you fix the price?",
    "The tracking page says my order is lost. Will you send another one?",
    "My coffee machine leaks water from the bottom. Is it under warranty?",
    "I moved house last month. How do I update my delivery address?",
    "Hello, my order was split into two boxes and only one has arrived.",
    "The size guide was wrong and my boots are too small. Can I exchange them?",
    "I booked a repair visit for Tuesday, but nobody came to my house.",
    "My gift card shows a zero balance although I never used it.",
)


def fit(audio: np.ndarray, seconds: float = CLIP_S, max_trim_s: float = MAX_TRIM_S) -> np.ndarray:
    """`audio` (16 kHz) exactly `seconds` long: silence appended, or at most `max_trim_s` cut off its end."""
    want = round(seconds * SAMPLE_RATE)
    if len(audio) - want > max_trim_s * SAMPLE_RATE:
        raise ValueError(f"a {len(audio) / SAMPLE_RATE:.2f} s clip would lose speech cut to {seconds} s")
    out = np.zeros(want, dtype=np.float32)
    out[: min(want, len(audio))] = audio[:want]
    return out


def spoken_clips(count: int) -> list[dict[str, Any]]:
    """`count` clips (WAV bytes, text, the synthesized length), one sentence each, cycling QUESTIONS."""
    from fusion.synthesizers import Voice, speak
    from modalities.speech import to_wav_bytes

    voice, clips = Voice(*VOICE), []
    for i in range(count):
        text = QUESTIONS[i % len(QUESTIONS)]
        audio = speak(voice, text, 1.0)
        clips.append({"text": text, "raw_s": round(len(audio) / SAMPLE_RATE, 2), "wav": to_wav_bytes(fit(audio))})
    return clips


def chat_ttft(client: httpx.Client, base: str, wav: bytes, mode: str, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """One streamed chat completion of the clip alone in fusion `mode`: TTFT (request sent → first
    chunk carrying content), the `Server-Timing` durations, the prompt's tokens, the text."""
    body = {
        "model": "chorus",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "chorus": {"fusion": mode},
    }
    first, text, usage = None, [], None
    start = time.perf_counter()
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{mode}: {resp.status_code} {resp.read().decode(errors='replace')[:500]}")
        timing = parse_server_timing(resp.headers.get("server-timing"))
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            usage = chunk.get("usage") or usage
            choices = chunk.get("choices") or []
            content = choices[0].get("delta", {}).get("content") if choices else None
            if content:
                first = first or time.perf_counter()
                text.append(content)
    if first is None:
        raise RuntimeError(f"{mode}: the stream ended without content")
    return {
        "ttft_s": round(first - start, 4),
        "server_timing_s": timing,
        "prompt_tokens": (usage or {}).get("prompt_tokens"),
        "text": "".join(text),
    }


def run_pairs(base: str, clips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pair per clip (the first a warm-up), new bytes for every request, the order flipping."""
    rows = []
    with httpx.Client(timeout=TIMEOUT_S) as client:
        for i, clip in enumerate(clips):
            wav = clip["wav"]
            fresh = iter(byte_variants(wav, len(MODES), offset=len(wav) - 2))
            order = MODES if i % 2 == 0 else MODES[::-1]
            pair = {"pair": i, "warm_up": i == 0, "text": clip["text"], "raw_s": clip["raw_s"], "order": list(order)}
            for mode in order:
                pair[mode] = chat_ttft(client, base, next(fresh), mode)
            rows.append(pair)
            print(
                f"pair {i}{' (warm-up)' if i == 0 else ''}: "
                + ", ".join(f"{m} {pair[m]['ttft_s'] * 1000:.0f} ms" for m in MODES),
                flush=True,
            )
    return rows


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


def summarize(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: TTFT and its `Server-Timing` parts (median, min, max); the ratio of the medians
    embed/transcript and of each pair's own, against the target."""
    counted = [p for p in pairs if not p["warm_up"]]
    modes: dict[str, Any] = {}
    for mode in MODES:
        runs = [p[mode] for p in counted]
        timed = [
            (r["ttft_s"], r["server_timing_s"])
            for r in runs
            if {"ingress", "prep", "decoder"} <= r["server_timing_s"].keys()
        ]
        modes[mode] = {
            "ttft_s": spread([r["ttft_s"] for r in runs]),
            "prompt_tokens": spread([r["prompt_tokens"] for r in runs if r["prompt_tokens"] is not None]),
            "server_timing_s": {
                "prep": spread([s["prep"] for _, s in timed]),
                "decoder": spread([s["decoder"] for _, s in timed]),
                "ingress_to_decoder_hops": spread([s["ingress"] - s["prep"] - s["decoder"] for _, s in timed]),
                "client_to_ingress_hops": spread([t - s["ingress"] for t, s in timed]),
            }
            if timed
            else None,
        }
    embed, transcript = modes["embed"]["ttft_s"], modes["transcript"]["ttft_s"]
    ratio = embed["median"] / transcript["median"] if embed and transcript else None
    per_pair = [p["embed"]["ttft_s"] / p["transcript"]["ttft_s"] for p in counted]
    return {
        "modes": modes,
        "ratio_of_medians": None if ratio is None else round(ratio, 3),
        "ratio_per_pair": spread(per_pair),
        "target": f"embed / transcript TTFT <= {MAX_RATIO}",
        "met": None if ratio is None else ratio <= MAX_RATIO,
    }


def _ms(stat: dict[str, float] | None, key: str = "median") -> str:
    return "–" if not stat else f"{stat[key] * 1000:.0f}"


def table(results: dict[str, Any]) -> list[str]:
    s = results["summary"]
    lines = [
        "| fusion | TTFT median (ms) | min–max (ms) | Server-Timing prep (ms) | decoder (ms) | ingress↔decoder hops (ms) | "
        "client↔ingress (ms) | prompt tokens |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in MODES:
        m = s["modes"][mode]
        st = m["server_timing_s"] or {}
        tokens = "–" if not m["prompt_tokens"] else f"{m['prompt_tokens']['median']:g}"
        lines.append(
            f"| {mode} | {_ms(m['ttft_s'])} | {_ms(m['ttft_s'], 'min')}–{_ms(m['ttft_s'], 'max')} | {_ms(st.get('prep'))} | "
            f"{_ms(st.get('decoder'))} | {_ms(st.get('ingress_to_decoder_hops'))} | {_ms(st.get('client_to_ingress_hops'))} | "
            f"{tokens} |"
        )
    per_pair = s["ratio_per_pair"]
    verdict = "–" if s["met"] is None else ("met" if s["met"] else "not met")
    lines.append("")
    lines.append(
        f"embed / transcript TTFT: {s['ratio_of_medians']}× (medians; per pair median {per_pair['median']:.2f}×, "
        f"{per_pair['min']:.2f}–{per_pair['max']:.2f}×, {per_pair['n']} pairs); target ≤ {MAX_RATIO}×: {verdict}"
    )
    return lines


def projector_record(config_path: Path, base: str) -> dict[str, Any]:
    """The audio projector the app loads: its config value, checkpoint directory, metadata and weights' hash,
    and whether the decoder reports an audio projector loaded (/health)."""
    from fusion.checkpoint import PACKAGED_AUDIO_PROJECTOR, WEIGHTS_FILE, read_metadata

    configured = (yaml.safe_load(config_path.read_text())["applications"][0]["args"].get("fusion") or {}).get(
        "audio_projector"
    )
    record: dict[str, Any] = {"configured": configured}
    try:
        decoder = httpx.get(f"{base}/health", timeout=30).json()["deployments"]["llm_decoder"]
        record["decoder_projectors"] = decoder.get("projectors")
        record["random_projectors"] = decoder.get("random_projectors")
    except (httpx.HTTPError, KeyError, ValueError) as err:
        record["decoder_projectors"] = f"unknown ({type(err).__name__})"
    if not configured:
        return record
    path = PACKAGED_AUDIO_PROJECTOR if configured == "packaged" else Path(configured).expanduser()
    directory = path.parent if path.suffix == ".safetensors" else path
    meta = read_metadata(directory)
    training = meta.get("training") or {}
    record.update(
        {
            "directory": str(directory.relative_to(REPO) if directory.is_relative_to(REPO) else directory),
            "weights_sha256": hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest(),
            "projector": meta.get("projector"),
            "dtype": meta.get("dtype"),
            "encoder": (meta.get("encoder") or {}).get("name"),
            "llm": (meta.get("llm") or {}).get("name"),
            "training_steps": training.get("steps"),
            "training_seconds": training.get("seconds"),
            "heldout_ce": training.get("heldout_ce"),
        }
    )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service (default: start deploy/local.yaml here)")
    parser.add_argument("--pairs", type=int, default=8, help="embed/transcript pairs counted (after one warm-up pair)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    from bench.service import open_service
    from bench.voice import machine

    info = machine()
    began = time.perf_counter()
    clips = spoken_clips(args.pairs + 1)  # before the service competes for the CPUs
    info["synthesis_s"] = round(time.perf_counter() - began, 1)
    base, stop = open_service(args.url, SERVE_CONFIG, info)
    try:
        results: dict[str, Any] = {
            "command": " ".join([".venv/bin/python -m bench.fusion_ttft", *(sys.argv[1:] if argv is None else argv)]),
            "service": args.url or "deploy/local.yaml, started here",
            "machine": info,
            "request": {
                "content": "input_audio only (WAV, 16 kHz, PCM16)",
                "clip_s": CLIP_S,
                "voice": ":".join(VOICE),
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "stream": True,
                "pairs": args.pairs,
                "sentences_repeat": args.pairs + 1 > len(QUESTIONS),
            },
            "projector": projector_record(SERVE_CONFIG, base),
        }
        results["pairs"] = run_pairs(base, clips)
    finally:
        if stop is not None:
            stop()
    info["loadavg_end"] = os.getloadavg()
    info["total_s"] = round(time.perf_counter() - began, 1)
    results["summary"] = summarize(results["pairs"])
    results["table"] = table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    proj = results["projector"]
    print(
        f"projector: {proj.get('directory', proj['configured'])} ({(proj.get('projector') or {}).get('kind')}, "
        f"{proj.get('training_steps')} steps; decoder reports {proj.get('decoder_projectors')})"
    )
    print("\n".join(results["table"]))
    print(f"wrote {args.out} ({info['total_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
