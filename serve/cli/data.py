"""`chorus make-speech-data` / `make-vision-data`: the feature sets projectors train on, with the
frozen encoder's features cached beside them (see fusion.speech_data and fusion.vision_data)."""

from __future__ import annotations

import argparse
import time

from serve.cli.common import (
    REPO_ROOT,
    add_command,
    add_device,
    add_seed,
    add_threads,
    config_from_args,
    default_fusion_dir,
)

SPEECH_SET = "speech-v3"  # the directory names under <cache>/fusion that the other commands default to
VISION_SET = "vision-v1"
TINY_CLIP = REPO_ROOT / "tests" / "assets" / "tiny_clip.json"


def add_parser(subparsers) -> None:
    _add_speech(subparsers)
    _add_vision(subparsers)


def _add_speech(subparsers) -> None:
    data = add_command(
        subparsers, "make-speech-data", "build the speech corpus (4 synthesizers, teacher answers, Whisper features)",
        _cmd_make_speech_data,
        description="Build the speech corpus audio projectors train on: template, LLM-written and prose sentences "
        "spoken by espeak-ng, flite, festival and hibari voices with noise and telephone-band augmentation, the "
        "LLM's own answers to each sentence (distillation targets), Whisper features cached in shards. "
        "Resumes an interrupted build.",
    )
    data.add_argument("--out", default=default_fusion_dir(SPEECH_SET), help="corpus directory (outside the repo)")
    data.add_argument("--template-sentences", type=int, default=3000, help="distinct sentences from the training templates")
    data.add_argument("--llm-sentences", type=int, default=200, help="sentences the LLM writes (cached)")
    data.add_argument("--llm-budget-s", type=float, default=180.0, help="wall-clock cap on LLM sentence writing, seconds")
    data.add_argument("--prose-sentences", type=int, default=2200, help="sentences from stdlib docstrings")
    data.add_argument("--eval-clips", type=int, default=100, help="clips in eval_templates and eval_synth each")
    data.add_argument("--answer-max-tokens", type=int, default=32, help="longest teacher answer, tokens")
    data.add_argument("--answer-sentences", type=int, default=2500, help="training sentences the LLM answers (0: none)")
    add_seed(data, "sentences, splits, voices, speeds, pitches and augmentations")
    add_threads(data, 2)


def _add_vision(subparsers) -> None:
    vdata = add_command(
        subparsers, "make-vision-data", "build the image set (shapes or captions, CLIP features)", _cmd_make_vision_data,
        description="Build the image set image projectors train on: drawn shapes with generated captions, or a real "
        "caption file (--captions), with CLIP patch features cached in shards. Resumes an interrupted build.",
    )
    vdata.add_argument("--out", default=default_fusion_dir(VISION_SET), help="image-set directory (outside the repo)")
    vdata.add_argument("--train-images", type=int, default=4000, help="training images (with --captions: training captions)")
    vdata.add_argument("--eval-images", type=int, default=200, help="per held-out split (eval_seen, eval_combos)")
    vdata.add_argument("--captions", default=None, help="real captions instead of drawn shapes: LLaVA-Pretrain JSON, "
                       "COCO captions JSON or {image, caption} JSONL")
    vdata.add_argument("--image-root", default=None, help="directory the caption file's image paths are relative to")
    vdata.add_argument("--clip-model", default=str(TINY_CLIP),
                       help="open_clip architecture or model-config JSON (default: the tiny test CLIP)")
    vdata.add_argument("--clip-pretrained", default=None, help="open_clip tag or local checkpoint (default: random init)")
    vdata.add_argument("--clip-seed", type=int, default=0, help="torch seed for random-init CLIP weights")
    vdata.add_argument("--feature-layer", type=int, default=-2, help="CLIP image-tower block whose output is the patch features")
    add_seed(vdata, "drawing images and splits")
    add_threads(vdata, 2)
    add_device(vdata, "CLIP")


def _cmd_make_speech_data(args: argparse.Namespace) -> int:
    import torch

    from fusion.shards import RECIPE
    from fusion.speech_data import SpeechDataConfig, build_speech_data
    from modalities.audio.whisper import WhisperConfig, WhisperRuntime
    from modalities.llm.runtime import LLMConfig, LLMRuntime

    config = config_from_args(SpeechDataConfig, args, out_dir=args.out)
    torch.set_num_threads(args.threads)

    def llm_factory():
        # bfloat16: batched generation of the teacher answers ~1.8x faster than float32 where the CPU has BF16
        runtime = LLMRuntime.from_config(LLMConfig(threads=args.threads, dtype="bfloat16"))
        return runtime.model, runtime.tokenizer

    whisper_rt = WhisperRuntime.from_config(WhisperConfig(threads=args.threads))
    start = time.perf_counter()
    out = build_speech_data(config, whisper_rt, llm_factory)
    print(f"speech corpus at {out} ({time.perf_counter() - start:.0f} s)")
    print((out / RECIPE).read_text())
    return 0


def _cmd_make_vision_data(args: argparse.Namespace) -> int:
    import torch

    from fusion.vision_data import VisionDataConfig, build_clip, build_vision_data, encoder_identity

    config = config_from_args(VisionDataConfig, args, out_dir=args.out)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = build_vision_data(config, build_clip(config, args.threads, args.device), encoder_identity(config))
    print(f"image set at {out} ({time.perf_counter() - start:.0f} s)")
    return 0
