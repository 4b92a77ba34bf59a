"""Encoder sections: Whisper adaptive vs full window, CLIP batching, the encoders' feature cache.

Whisper runs the packaged base model; the window measurements reuse bench/whisper_window.py.
CLIP has no real weights on these machines, so it runs the tiny test config with random weights
(tests/assets/tiny_clip.json): its images/s show batching mechanics, not a real model's speed.
The feature cache is measured through the encoder deployments' own batch code (`_run`, called as
plain classes, no Ray): a repeated clip/image (hit) vs new bytes with the same content (miss).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch

from bench.context import BenchContext
from bench.report import Figure, Stat, Target

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP = REPO / "tests" / "assets" / "tiny_clip.json"
SERVE_CONFIG = REPO / "deploy" / "local.yaml"
CLIP_SECONDS = (2.0, 5.0, 10.0, 30.0)
GAP_S = 0.3  # silence between concatenated sentences
TARGET_CLIP_S = 5.0
MAX_ADAPTIVE_RATIO_5S = 0.25
MAX_WER_INCREASE_PT = 1.0
CLIP_BATCH = 8
IMAGE_SIZE = 224
SAMPLE_RATE = 16_000
FULL, ADAPTIVE = "full window", "adaptive, 5 s margin"  # whisper_window.VARIANTS keys; adaptive = the default


def clip_of(corpus: list[tuple[str, np.ndarray]], seconds: float) -> np.ndarray:
    """Exactly `seconds` of speech: corpus sentences one after another (short gaps), cut to length."""
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    pieces: list[np.ndarray] = []
    total = 0
    want = int(seconds * SAMPLE_RATE)
    while total < want:
        for _, audio in corpus:
            pieces.extend([audio, gap])
            total += len(audio) + len(gap)
            if total >= want:
                break
    return np.concatenate(pieces)[:want].astype(np.float32)


def section_encoders(ctx: BenchContext) -> None:
    _whisper(ctx)
    _clip(ctx)
    _feature_cache(ctx)


def _whisper(ctx: BenchContext) -> None:
    from bench import whisper_window
    from modalities.audio import weights as whisper_weights
    from modalities.speech import sample_corpus

    opts, report = ctx.options, ctx.report
    repeats = 2 if opts.quick else opts.repeats
    torch.set_num_threads(opts.threads)
    try:
        model = whisper_weights.load_packaged_whisper("cpu")
        corpus = sample_corpus()
    except Exception as e:  # noqa: BLE001 - not measured, with the reason
        report.add(Figure("encoders", "Whisper adaptive window", "s", None, note=f"{type(e).__name__}: {e}"))
        return
    lengths = (TARGET_CLIP_S,) if opts.quick else CLIP_SECONDS
    detail: dict = {"encoder_s": {}, "threads": opts.threads}
    for seconds in lengths:
        times = whisper_window.encoder_times(model, clip_of(corpus, seconds), repeats)
        detail["encoder_s"][seconds] = times
        report.add(Figure("encoders", f"Whisper encoder, {seconds:g} s clip, adaptive window", "s",
                          Stat.of(times["adaptive"]), Stat.of(times["full"]), "full 30-s window",
                          Target("<=", MAX_ADAPTIVE_RATIO_5S) if seconds == TARGET_CLIP_S else None))
    clips = corpus[:3] if opts.quick else corpus
    variants = {name: whisper_window.VARIANTS[name] for name in (FULL, ADAPTIVE)}
    transcribed = whisper_window.bench_transcribe(model, clips, variants)
    full, adaptive = transcribed[FULL], transcribed[ADAPTIVE]
    detail["transcribe"] = transcribed
    report.add(Figure("encoders", "Whisper transcription WER, adaptive window", "%",
                      Stat.exact(100 * adaptive["wer"]), Stat.exact(100 * full["wer"]), "full window",
                      Target("<=", MAX_WER_INCREASE_PT, on="difference"),
                      note=f"corpus WER over {len(clips)} espeak-ng clips (modalities.speech.espeak.sample_corpus), "
                      f"the adaptive default encodes the clip + 5 s of silence"))
    report.add(Figure("encoders", "Whisper transcription time per clip, adaptive", "s",
                      Stat.of([r["seconds"] for r in adaptive["clips"]]),
                      Stat.of([r["seconds"] for r in full["clips"]]), "full window"))
    report.sections["encoders.whisper"] = detail


def _tiny_clip_runtime(threads: int):
    from modalities.vision import ClipConfig, ClipRuntime

    return ClipRuntime.from_config(
        ClipConfig(model_name=str(TINY_CLIP), pretrained=None, random_init=True, threads=threads)
    )


def _images(n: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in range(n)]


def _clip(ctx: BenchContext) -> None:
    opts, report = ctx.options, ctx.report
    repeats = 2 if opts.quick else opts.repeats
    name = "CLIP images/s, batch 8 (tiny random-init CLIP)"
    if not TINY_CLIP.is_file():
        report.add(Figure("encoders", name, "img/s", None, note=f"{TINY_CLIP} not found (a source checkout is needed)"))
        return
    runtime = _tiny_clip_runtime(opts.threads)
    images = _images(CLIP_BATCH)
    runtime.encode_images(images)  # warm-up
    batched, single = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.encode_images(images)
        batched.append(CLIP_BATCH / (time.perf_counter() - start))
        start = time.perf_counter()
        for image in images:
            runtime.encode_images([image])
        single.append(CLIP_BATCH / (time.perf_counter() - start))
    report.add(Figure("encoders", name, "img/s", Stat.of(batched), Stat.of(single), "batch 1",
                      note="CLIP: tests/assets/tiny_clip.json with random weights (no CLIP weights exist here), "
                      f"{IMAGE_SIZE}×{IMAGE_SIZE} images, preprocessing included: batching mechanics, not a real ViT's speed"))
    torch.set_num_threads(opts.threads)


def _wav_bytes(audio: np.ndarray) -> bytes:
    from modalities.speech import to_wav_bytes

    return to_wav_bytes(audio)


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def byte_variants(data: bytes, n: int, offset: int) -> list[bytes]:
    """`n` byte strings of the same size but distinct hashes (one byte of PCM payload changed)."""
    out = []
    for i in range(n):
        changed = bytearray(data)
        changed[offset] = (changed[offset] + 1 + i) % 256
        out.append(bytes(changed))
    return out


def _hit_vs_miss(run, fresh: list[bytes], repeated: bytes) -> tuple[list[float], list[float]]:
    """Seconds per `_run([item])` call: new bytes each time (miss) vs the same bytes again (hit)."""
    run(repeated)  # now cached
    misses, hits = [], []
    for data in fresh:
        start = time.perf_counter()
        run(data)
        misses.append(time.perf_counter() - start)
        start = time.perf_counter()
        run(repeated)
        hits.append(time.perf_counter() - start)
    return hits, misses


def _feature_cache(ctx: BenchContext) -> None:
    opts, report = ctx.options, ctx.report
    repeats = 2 if opts.quick else opts.repeats
    try:
        import yaml

        import modalities.feature_cache  # noqa: F401 - the cache the deployments use
        from serve.deployments import AudioEncoder, VisionEncoder
    except ImportError as e:
        report.add(Figure("encoders", "feature cache hit vs miss", "s", None,
                          note=f"no encoder feature cache in this checkout ({e})"))
        return
    args = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["args"]
    # Explicit threads: left unset, the deployment asks Ray for its CPU claim, which starts (or joins!) a cluster.
    args = {**args, "whisper": {**(args.get("whisper") or {}), "threads": opts.threads}}
    try:
        from modalities.audio import WhisperRuntime
        from modalities.audio import weights as whisper_weights
        from modalities.speech import sample_corpus

        whisper_rt = WhisperRuntime(whisper_weights.load_packaged_whisper("cpu"))
        audio_encoder = AudioEncoder(args, runtime_factory=lambda config: whisper_rt)
        wav = _wav_bytes(clip_of(sample_corpus(), TARGET_CLIP_S))
        hits, misses = _hit_vs_miss(lambda data: audio_encoder._run([(data, True, False, None)]),
                                    byte_variants(wav, repeats, offset=len(wav) // 2), wav)
        report.add(Figure("encoders", "Whisper features, 5 s clip, cache hit", "s", Stat.of(hits), Stat.of(misses), "miss",
                          note="AudioEncoder._run (the deployment's batch code, no Ray): the same WAV again vs "
                          "new bytes (one sample changed, same length) each time"))
    except Exception as e:  # noqa: BLE001
        report.add(Figure("encoders", "Whisper features, cache hit", "s", None, note=f"{type(e).__name__}: {e}"))
    try:
        clip_rt = _tiny_clip_runtime(opts.threads)
        vision_args = {**args, "vision": {"model_name": str(TINY_CLIP), "pretrained": None, "random_init": True,
                                           "threads": opts.threads}}
        vision_encoder = VisionEncoder(vision_args, runtime_factory=lambda config: clip_rt)
        png = _png_bytes(_images(1, seed=1)[0])
        fresh = [_png_bytes(image) for image in _images(repeats, seed=2)]  # same size, new content
        hits, misses = _hit_vs_miss(lambda data: vision_encoder._run([data]), fresh, png)
        report.add(Figure("encoders", "CLIP patch features, cache hit (tiny random-init CLIP)", "s", Stat.of(hits),
                          Stat.of(misses), "miss", note="VisionEncoder._run, the same PNG again vs a new PNG of the same size each time"))
    except Exception as e:  # noqa: BLE001
        report.add(Figure("encoders", "CLIP patch features, cache hit", "s", None, note=f"{type(e).__name__}: {e}"))
    torch.set_num_threads(opts.threads)
