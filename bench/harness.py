"""`chorus bench`: run the side-by-side benchmark sections, write JSON + markdown + PNG plots.

    chorus bench [--only decode,quant] [--quick] [--threads 1] [--out bench/results/report]

Sections (in run order): decode (ours vs llama.cpp), bandwidth (decode vs the memory-bandwidth
bound), quant (none/int8/int4 vs fp32), service (HTTP API vs the engine directly), concurrency
(1-8 streams), encoders (Whisper window, CLIP batching, feature cache), engines (Performance II: llama.cpp,
the torch and ONNX Runtime engines and the API stream in one table; bench/engines.py), structured (what
constrained decoding costs per token, compile times, validity; bench/structured.py). A section that fails is
reported as not measured with its error; the others still run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy imports (torch, transformers) wait until a bench runs: `chorus --help` stays instant
    from bench.context import BenchContext, BenchOptions
    from bench.report import Report

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "report"


def _sections() -> dict[str, Callable[[BenchContext], None]]:
    from bench.encoders import section_encoders
    from bench.engines import section_engines
    from bench.llm_sections import section_bandwidth, section_concurrency, section_decode, section_quant
    from bench.service import section_service
    from bench.structured import section_structured

    return {
        "decode": section_decode,
        "bandwidth": section_bandwidth,
        "quant": section_quant,
        "service": section_service,
        "concurrency": section_concurrency,
        "encoders": section_encoders,
        "engines": section_engines,
        "structured": section_structured,
    }


SECTION_NAMES = ("decode", "bandwidth", "quant", "service", "concurrency", "encoders", "engines", "structured")


def parse_only(value: str | None) -> list[str]:
    """'decode,quant' → ['decode', 'quant'] in run order; unknown names raise ValueError."""
    if not value:
        return list(SECTION_NAMES)
    chosen = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(chosen - set(SECTION_NAMES))
    if unknown:
        raise ValueError(f"unknown bench section(s) {', '.join(unknown)}; known: {', '.join(SECTION_NAMES)}")
    return [name for name in SECTION_NAMES if name in chosen]


def _log(message: str) -> None:
    print(message, flush=True)


def run_bench(
    sections: Sequence[str],
    options: BenchOptions,
    out_dir: Path,
    log: Callable[[str], None] = _log,
) -> tuple[Report, list[Path]]:
    """Run `sections` in order and write the report into `out_dir`; returns it and the files written."""
    import torch

    from bench.context import BenchContext, env_info
    from bench.report import Figure

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here; a lookup would wait on timeouts
    torch.set_num_threads(options.threads)
    ctx = BenchContext(options=options, log=log)
    ctx.report.env = {**env_info(options.threads), "sections": list(sections), "quick": options.quick,
                      "model": options.model}
    available = _sections()
    started = time.perf_counter()
    for name in sections:
        log(f"[bench] {name} ...")
        section_start = time.perf_counter()
        before = len(ctx.report.figures)
        try:
            available[name](ctx)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
            ctx.report.add(Figure(name, f"{name} section", "", None, note=f"section failed: {type(e).__name__}: {e}"))
            ctx.report.sections[f"{name}.error"] = {"traceback": traceback.format_exc()}
        elapsed = time.perf_counter() - section_start
        ctx.report.env.setdefault("section_s", {})[name] = round(elapsed, 1)
        log(f"[bench] {name}: {len(ctx.report.figures) - before} figure(s) in {elapsed:.0f} s")
    ctx.report.env.update(loadavg_end=round(os.getloadavg()[0], 2), wall_s=round(time.perf_counter() - started, 1),
                          llm_load_s=ctx.load_s)
    return ctx.report, ctx.report.write(out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", default=None, help=f"comma-separated sections: {','.join(SECTION_NAMES)} (default all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer repeats and tokens, numbers not for quoting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and llama.cpp threads); default 1")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (medians; --quick uses 2)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per decode measurement")
    parser.add_argument("--model", default="packaged", help="LLM: 'packaged' or a local transformers model directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (report.json, report.md, *.png)")


def main(args: argparse.Namespace) -> int:
    from bench.context import BenchOptions

    try:
        sections = parse_only(args.only)
    except ValueError as e:
        print(f"chorus bench: {e}", file=sys.stderr)
        return 2
    options = BenchOptions(threads=args.threads, quick=args.quick, model=args.model, repeats=args.repeats,
                           new_tokens=args.new_tokens)
    report, files = run_bench(sections, options, args.out)
    print()
    print(report.markdown())
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__.splitlines()[0])
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
