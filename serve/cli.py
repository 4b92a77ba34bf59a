"""The `chorus` command line.

Heavy imports (torch, transformers, whisper) happen inside the subcommands so `chorus --help` is
instant. Subcommands:

  chorus models prepare [--only llm|whisper] [--force]   turn the packaged wheels into loadable models
  chorus models info                                     where prepared models live, their hashes
  chorus demo [--audio FILE] [--question TEXT]           a spoken request → transcript → LLM answer
  chorus serve [--config deploy/local.yaml]              run the service (Ray Serve), print how to try it
  chorus make-speech-data [--out DIR]                    espeak-ng speech corpus + cached Whisper features
  chorus make-vision-data [--out DIR]                    synthetic shape images + cached CLIP patch features
  chorus train-projector --data DIR [--out DIR]          train a projector (encoder, LLM frozen); audio or image by --data
  chorus eval-projector --checkpoint DIR --data DIR      audio: "repeat" WER; image: caption CE + attribute accuracy
  chorus eval-agreement [--checkpoint packaged]          "answer the request": embed vs transcript answer agreement
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from serve import haproxy

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEMO_AUDIO = REPO_ROOT / "samples" / "audio" / "where_is_my_order.wav"
DEFAULT_SERVE_CONFIG = REPO_ROOT / "deploy" / "local.yaml"
READY_TIMEOUT_S = 600.0
STOP_GRACE_S = 30.0  # how long `serve run` may take to shut down after Ctrl-C / SIGTERM


def _cmd_models_prepare(args: argparse.Namespace) -> int:
    from modalities.llm.weights import prepare_llm
    from modalities.audio.weights import prepare_whisper

    steps = {"whisper": prepare_whisper, "llm": prepare_llm}
    for name, prepare in steps.items():
        if args.only and args.only != name:
            continue
        start = time.perf_counter()
        path = prepare(force=args.force)
        print(f"{name}: {path}  ({time.perf_counter() - start:.1f} s)")
    return 0


def _cmd_models_info(args: argparse.Namespace) -> int:
    from modalities import paths

    info = {
        "cache_dir": str(paths.cache_dir()),
        "llm": str(paths.packaged_llm_dir()),
        "whisper": str(paths.packaged_whisper_path()),
    }
    for key in ("llm", "whisper"):
        target = Path(info[key])
        info[f"{key}_prepared"] = target.exists()
    print(json.dumps(info, indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """A real round trip without Serve: Whisper transcribes a spoken sample, the LLM answers it."""
    from modalities.audio.decode import decode_audio
    from modalities.llm.runtime import LLMConfig, LLMRuntime, SamplingParams
    from modalities.audio.whisper import WhisperConfig, WhisperRuntime

    audio_path = Path(args.audio)
    t0 = time.perf_counter()
    whisper_rt = WhisperRuntime.from_config(WhisperConfig())
    t1 = time.perf_counter()
    llm = LLMRuntime.from_config(LLMConfig(quantization=args.quantization))
    t2 = time.perf_counter()
    print(f"loaded Whisper in {t1 - t0:.1f} s, LLM ({args.quantization}) in {t2 - t1:.1f} s")

    audio = decode_audio(audio_path.read_bytes())
    t3 = time.perf_counter()
    transcript = whisper_rt.transcribe(audio)
    t4 = time.perf_counter()
    print(f"\n[{audio_path.name}, {len(audio) / 16_000:.1f} s of speech, transcribed in {t4 - t3:.2f} s]")
    print(f"caller: {transcript.text}")

    messages = [
        {"role": "system", "content": "You are a friendly customer-service assistant. Answer briefly."},
        {"role": "user", "content": f"{args.question}\n\nThe caller said: \"{transcript.text}\""},
    ]
    ids = llm.chat_template(messages)
    print("assistant: ", end="", flush=True)
    t5 = time.perf_counter()
    n_tokens = 0
    finish = None
    for event in llm.stream(input_ids=ids, params=SamplingParams(max_tokens=args.max_tokens, temperature=0.0)):
        print(event.text, end="", flush=True)
        n_tokens += 1
        finish = event.finish_reason or finish
    elapsed = time.perf_counter() - t5
    print(f"\n\n[{n_tokens} tokens in {elapsed:.2f} s, {n_tokens / elapsed:.1f} tok/s, finish_reason={finish}]")
    return 0


def _try_it(base: str, model: str) -> str:
    return f"""
Chorus is up at {base}  (OpenAI-compatible; model id "{model}")

  curl {base}/health
  curl {base}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Where is my parcel?"}}]}}'
  curl {base}/v1/audio/transcriptions -F model=whisper-1 -F file=@samples/audio/where_is_my_order.wav
  .venv/bin/python samples/openai_audio.py        # the official openai client, speech in

Ctrl-C (or a SIGTERM to this process) stops it.
"""


def _cmd_serve(args: argparse.Namespace) -> int:
    """`serve run` the config in the foreground; once healthy, print how to try it."""
    import subprocess
    import urllib.request

    import yaml

    config = yaml.safe_load(Path(args.config).read_text())
    http = config.get("http_options") or {}
    base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    model = (config["applications"][0].get("args") or {}).get("served_model_name", "chorus")
    serve_bin = Path(sys.executable).with_name("serve")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    address_args = _serve_run_address_args()
    # With CHORUS_HAPROXY=1 a cluster `serve run` starts itself serves through HAProxy
    # (serve/haproxy.py); one it joins keeps the ingress it was started with.
    proxy_env = haproxy.cluster_env() if address_args else {}
    command = [str(serve_bin), "run", *address_args, str(args.config)]

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                if resp.status == 200:
                    print(_try_it(base, model), flush=True)
                    return True
        except OSError:
            pass
        return False

    try:
        proc = subprocess.Popen(command, env={**env, **proxy_env}, cwd=REPO_ROOT, preexec_fn=_default_sigint)
        return _supervise(proc, ready)
    finally:
        haproxy.cleanup(proxy_env)


def _default_sigint() -> None:
    """In the `serve run` child: Ctrl-C's default action back, even where this process ignores it
    (a shell starts background jobs with SIGINT ignored, and children inherit that), so that the
    SIGINT `_stop` sends always reaches Serve's shutdown."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _supervise(proc, ready=None, poll_s: float = 2.0) -> int:
    """Wait for the `serve run` child in the foreground, calling `ready()` every `poll_s` until it
    says True. Ctrl-C or SIGTERM (`kill`, a process manager) stop the child as Ctrl-C stops it
    (`_stop`); without the SIGTERM handler the child and the Ray cluster it started outlived us."""
    import signal

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while ready is not None and proc.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(poll_s)
        return proc.wait()
    except KeyboardInterrupt:
        return _stop(proc)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(proc, grace_s: float = STOP_GRACE_S) -> int:
    """SIGINT (Serve shuts its applications down and stops the cluster it started), then SIGTERM if
    it is still running after `grace_s`; the child's exit status."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        return proc.wait()


def _serve_run_address_args() -> list[str]:
    """Extra `serve run` arguments choosing the Ray cluster.

    Left alone, `serve run` joins the cluster named in Ray's address file (written by `ray start`,
    and by a local cluster that is still up); a file left by a cluster that died uncleanly makes it
    wait forever for a GCS that is gone. So: RAY_ADDRESS set → as is; a recorded cluster whose GCS
    port answers → join it (e.g. one started with `ray start --head --metrics-export-port ...`);
    otherwise a fresh local cluster.
    """
    if os.environ.get("RAY_ADDRESS"):
        return []
    recorded = _recorded_ray_address()
    if recorded and _port_answers(recorded):
        return []
    return ["--address", "local"]


def _recorded_ray_address() -> str | None:
    try:
        from ray._private.utils import read_ray_address
    except ImportError:
        return None
    try:
        return read_ray_address() or None
    except OSError:
        return None


def _port_answers(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def _default_fusion_dir(name: str) -> str:
    from modalities.paths import cache_dir

    return str(cache_dir() / "fusion" / name)


def _config_from_args(cls, args: argparse.Namespace, **explicit):
    """A pydantic config from the command-line options named like its fields, plus `explicit` ones."""
    values = {name: getattr(args, name) for name in cls.model_fields if hasattr(args, name)}
    return cls(**{**values, **explicit})


def _cmd_make_speech_data(args: argparse.Namespace) -> int:
    import torch

    from fusion.speech_data import SpeechDataConfig, build_speech_data
    from modalities.speech.espeak import synthesize
    from modalities.llm.runtime import LLMConfig, LLMRuntime
    from modalities.audio.whisper import WhisperConfig, WhisperRuntime

    config = _config_from_args(SpeechDataConfig, args, out_dir=args.out)
    torch.set_num_threads(args.threads)

    def llm_factory():
        runtime = LLMRuntime.from_config(LLMConfig(threads=args.threads))
        return runtime.model, runtime.tokenizer

    whisper_rt = WhisperRuntime.from_config(WhisperConfig(threads=args.threads))
    start = time.perf_counter()
    out = build_speech_data(config, whisper_rt, llm_factory, synthesize)
    print(f"speech corpus at {out} ({time.perf_counter() - start:.0f} s)")
    print((out / "recipe.json").read_text())
    return 0


def _cmd_make_vision_data(args: argparse.Namespace) -> int:
    import torch

    from fusion.vision_data import VisionDataConfig, build_clip, build_vision_data, encoder_identity

    config = _config_from_args(VisionDataConfig, args, out_dir=args.out)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = build_vision_data(config, build_clip(config, args.threads, args.device), encoder_identity(config))
    print(f"image set at {out} ({time.perf_counter() - start:.0f} s)")
    return 0


def _modality(args: argparse.Namespace) -> str:
    """--modality, else what the --data directory holds (an image set or a speech corpus)."""
    from fusion.vision_data import is_vision_data

    if args.modality:
        return args.modality
    return "image" if args.data and is_vision_data(args.data) else "audio"


def _cmd_train_projector(args: argparse.Namespace) -> int:
    from fusion.train import TrainConfig, train_projector_cli

    modality = _modality(args)
    data = args.data or _default_fusion_dir("vision-v1" if modality == "image" else "speech-v2")
    out = args.out or _default_fusion_dir(f"runs/{modality}")
    config = _config_from_args(
        TrainConfig, args, data_dir=data, out_dir=out, modality=modality, match_embedding_norm=not args.no_norm_match
    )
    command = "chorus " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("chorus") else " ".join(sys.argv)
    train_projector_cli(config, command=command, ship_to=args.ship_to)
    return 0


def _cmd_eval_projector(args: argparse.Namespace) -> int:
    from fusion.checkpoint import read_metadata
    from fusion.evaluate import evaluate_cli, evaluate_vision_cli

    if read_metadata(args.checkpoint).get("modality") == "image":
        data = args.data or read_metadata(args.checkpoint)["data"]["config"]["out_dir"]
        evaluate_vision_cli(args.checkpoint, data, args.limit, args.write_metadata, args.threads, args.report, args.device)
        return 0
    args.data = args.data or _default_fusion_dir("speech-v2")
    evaluate_cli(
        checkpoint=args.checkpoint,
        data_dir=args.data,
        limit=args.limit,
        modes=args.modes.split(","),
        write_metadata=args.write_metadata,
        threads=args.threads,
        report=args.report,
        baseline=args.baseline,
    )
    return 0


def _cmd_eval_agreement(args: argparse.Namespace) -> int:
    from fusion.agreement import evaluate_agreement_cli
    from fusion.checkpoint import PACKAGED, PACKAGED_AUDIO_PROJECTOR

    checkpoint = str(PACKAGED_AUDIO_PROJECTOR) if args.checkpoint == PACKAGED else args.checkpoint
    data = args.data or _default_fusion_dir("speech-v2")
    evaluate_agreement_cli(checkpoint, data, args.limit, args.threads, args.report, args.write_metadata)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from bench.harness import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chorus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="prepare and inspect model weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    prep = models_sub.add_parser("prepare", help="convert the packaged weights into loadable models (idempotent)")
    prep.add_argument("--only", choices=["llm", "whisper"], help="prepare just one model")
    prep.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    prep.set_defaults(func=_cmd_models_prepare)
    info = models_sub.add_parser("info", help="show where prepared models live")
    info.set_defaults(func=_cmd_models_info)

    demo = sub.add_parser("demo", help="command-line round trip: speech → transcript → LLM answer")
    demo.add_argument("--audio", default=str(DEFAULT_DEMO_AUDIO), help="wav/flac/ogg/mp3 file to transcribe")
    demo.add_argument("--question", default="How should I answer this caller?", help="instruction for the LLM")
    demo.add_argument("--quantization", default="none", choices=["none", "int8", "int4", "w8a8"])
    demo.add_argument("--max-tokens", type=int, default=96)
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("serve", help="run the service with a Serve config file (foreground)")
    run.add_argument("--config", default=str(DEFAULT_SERVE_CONFIG), help="Serve config YAML")
    run.set_defaults(func=_cmd_serve)

    data = sub.add_parser("make-speech-data", help="build the espeak-ng speech corpus with cached Whisper features")
    data.add_argument("--out", default=_default_fusion_dir("speech-v2"), help="corpus directory (outside the repo)")
    data.add_argument("--template-sentences", type=int, default=3400)
    data.add_argument("--llm-sentences", type=int, default=300, help="sentences the LLM writes (cached)")
    data.add_argument("--llm-budget-s", type=float, default=420.0, help="wall-clock cap on LLM sentence writing")
    data.add_argument("--prose-sentences", type=int, default=3000, help="sentences from stdlib docstrings")
    data.add_argument("--heldout-sentences", type=int, default=60)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--threads", type=int, default=2)
    data.set_defaults(func=_cmd_make_speech_data)

    vdata = sub.add_parser("make-vision-data", help="build the synthetic shapes image set with cached CLIP features")
    vdata.add_argument("--out", default=_default_fusion_dir("vision-v1"), help="image-set directory (outside the repo)")
    vdata.add_argument("--train-images", type=int, default=4000)
    vdata.add_argument("--eval-images", type=int, default=200, help="per held-out split (eval_seen, eval_combos)")
    vdata.add_argument("--captions", default=None, help="real captions instead of drawn shapes: LLaVA-Pretrain JSON, "
                       "COCO captions JSON or {image, caption} JSONL")
    vdata.add_argument("--image-root", default=None, help="directory the caption file's image paths are relative to")
    vdata.add_argument("--clip-model", default=str(REPO_ROOT / "tests" / "assets" / "tiny_clip.json"),
                       help="open_clip architecture or model-config JSON (default: the tiny test CLIP)")
    vdata.add_argument("--clip-pretrained", default=None, help="open_clip tag or local checkpoint; none = random init")
    vdata.add_argument("--clip-seed", type=int, default=0, help="torch seed for random-init CLIP weights")
    vdata.add_argument("--feature-layer", type=int, default=-2)
    vdata.add_argument("--seed", type=int, default=0)
    vdata.add_argument("--threads", type=int, default=2)
    vdata.add_argument("--device", default="cpu", help="torch device for CLIP (e.g. cuda)")
    vdata.set_defaults(func=_cmd_make_vision_data)

    train = sub.add_parser("train-projector", help="train an audio or image projector (encoder and LLM frozen)")
    train.add_argument("--data", default=None, help="speech corpus or image set (default: ~/.cache/chorus/fusion/speech-v2)")
    train.add_argument("--modality", choices=["audio", "image"], default=None, help="default: what --data holds")
    train.add_argument("--out", default=None, help="run directory (default: ~/.cache/chorus/fusion/runs/<modality>)")
    train.add_argument("--ship-to", default=None, help="also write the final fp16 projector to this directory")
    train.add_argument("--stack", type=int, default=4, help="Whisper frames per soft token (serve assumes 4)")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--distill", action="store_true", help="add KL to the LLM reading the transcript as text")
    train.add_argument("--no-norm-match", action="store_true", help="skip scaling outputs to the embedding norm")
    train.add_argument("--eval-every", type=int, default=200)
    train.add_argument("--checkpoint-every", type=int, default=50)
    train.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this long")
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--device", default="cpu", help="torch device for the LLM and projector (e.g. cuda)")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=_cmd_train_projector)

    ev = sub.add_parser("eval-projector", help='audio: "repeat" WER (embed/transcript/untrained); image: captions vs untrained')
    ev.add_argument("--checkpoint", required=True, help="projector checkpoint directory")
    ev.add_argument("--data", default=None, help="speech corpus / image set (default: speech-v2; the image set it was trained on)")
    ev.add_argument("--limit", type=int, default=40, help="clips / images per eval split")
    ev.add_argument("--modes", default="embed,transcript,untrained", help="audio: comma-separated")
    ev.add_argument("--write-metadata", action="store_true", help="record the figures in the checkpoint metadata")
    ev.add_argument("--report", default=None, help="also write the figures (and samples) to this JSON file")
    ev.add_argument("--baseline", default=None, help="merge the modes of an earlier --report JSON (same clips)")
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--device", default="cpu", help="torch device (image projectors; the audio eval runs on CPU)")
    ev.set_defaults(func=_cmd_eval_projector)

    agree = sub.add_parser("eval-agreement", help='"answer the request": embed vs transcript answers (word F1)')
    agree.add_argument("--checkpoint", default="packaged", help="audio projector checkpoint directory, or 'packaged'")
    agree.add_argument("--data", default=None, help="speech corpus (default: speech-v2 in the cache)")
    agree.add_argument("--limit", type=int, default=20, help="clips per eval split")
    agree.add_argument("--write-metadata", action="store_true", help="record the figures in the checkpoint metadata")
    agree.add_argument("--report", default=None, help="also write the figures (and samples) to this JSON file")
    agree.add_argument("--threads", type=int, default=1)
    agree.set_defaults(func=_cmd_eval_agreement)

    from bench.harness import add_arguments as add_bench_arguments  # argparse only: no heavy imports

    bench = sub.add_parser("bench", help="side-by-side benchmarks: JSON + markdown report + PNG plots")
    add_bench_arguments(bench)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
