"""`chorus models prepare|info`: turn the packaged weights into loadable models, and show where they live."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from serve.cli.common import add_command

MODEL_NAMES = ("llm", "llm-onnx", "whisper")


def add_parser(subparsers) -> None:
    models = add_command(subparsers, "models", "prepare and inspect model weights")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND", help="what to do")
    prep = add_command(models_sub, "prepare", "convert the packaged weights into loadable models (idempotent)", _cmd_models_prepare)
    prep.add_argument("--only", choices=list(MODEL_NAMES), help="prepare just one model (default: all)")
    prep.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    add_command(models_sub, "info", "show where prepared models live (JSON)", _cmd_models_info)


def _cmd_models_prepare(args: argparse.Namespace) -> int:
    from modalities.audio.weights import prepare_whisper
    from modalities.llm.onnx_export import prepare_onnx_llm
    from modalities.llm.weights import prepare_llm

    # llm-onnx is exported from the prepared llm (ONNX Runtime engine: int4 MatMulNBits, ~15 s)
    steps = {"whisper": prepare_whisper, "llm": prepare_llm, "llm-onnx": prepare_onnx_llm}
    for name, prepare in steps.items():
        if args.only and args.only != name:
            continue
        start = time.perf_counter()
        path = prepare(force=args.force)
        print(f"{name}: {path}  ({time.perf_counter() - start:.1f} s)")
    return 0


def _cmd_models_info(args: argparse.Namespace) -> int:
    from modalities import paths
    from modalities.llm.onnx_export import packaged_onnx_dir

    info = {
        "cache_dir": str(paths.cache_dir()),
        "llm": str(paths.packaged_llm_dir()),
        "llm_onnx": str(packaged_onnx_dir()),
        "whisper": str(paths.packaged_whisper_path()),
    }
    for key in (name.replace("-", "_") for name in MODEL_NAMES):
        info[f"{key}_prepared"] = Path(info[key]).exists()
    print(json.dumps(info, indent=2))
    return 0
