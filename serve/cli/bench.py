"""`chorus bench`: the side-by-side benchmarks; flags and the run itself live in bench.harness."""

from __future__ import annotations

import argparse

from serve.cli.common import add_command


def add_parser(subparsers) -> None:
    from bench.harness import add_arguments  # argparse only: torch waits until a bench runs

    bench = add_command(subparsers, "bench", "side-by-side benchmarks: JSON, markdown and PNG report", _cmd_bench)
    add_arguments(bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from bench.harness import main as bench_main

    return bench_main(args)
