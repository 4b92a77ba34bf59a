"""What every benchmark section shares: options, the loaded LLM runtimes, timing helpers.

Runtimes are loaded once per (quantization, engine) and reused by every section in the run, so the
decode, bandwidth, quantization and concurrency sections measure the very same objects.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from bench.report import Report
from modalities.llm import LLMConfig, LLMRuntime, SamplingParams

# The continuous-batching engine adds `LLMConfig.engine`; until it exists the runtime has one engine.
ENGINE_FIELD = "engine"
REFERENCE_ENGINE = "eager"


# The ONNX engine runs only its own int4 export: it has its section (`engines`, bench/engines.py) and
# stays out of the sections that sweep every engine through fp32 and torch's quantization modes.
OWN_SECTION_ENGINES = ("onnx",)


def available_engines() -> list[str | None]:
    """Torch engines `LLMConfig` knows, reference first; [None] when the config has no engine choice."""
    field_info = LLMConfig.model_fields.get(ENGINE_FIELD)
    if field_info is None:
        return [None]
    choices = list(getattr(field_info.annotation, "__args__", ()) or [field_info.default])
    choices = [engine for engine in choices if engine not in OWN_SECTION_ENGINES]
    return sorted(choices, key=lambda engine: engine != REFERENCE_ENGINE)


def default_engine() -> str | None:
    """The engine an `LLMConfig` gets when none is named (None: the config has no engine choice)."""
    field_info = LLMConfig.model_fields.get(ENGINE_FIELD)
    return None if field_info is None else field_info.default


def engine_label(engine: str | None) -> str:
    """None: this checkout's LLMConfig has no engine choice (the eager loop is the only engine)."""
    return engine or "eager"


@dataclass
class BenchOptions:
    threads: int = 1
    quick: bool = False
    model: str = "packaged"  # an LLMConfig.model: 'packaged' or a local transformers directory
    repeats: int = 3
    new_tokens: int = 64


@dataclass
class BenchContext:
    options: BenchOptions
    report: Report = field(default_factory=Report)
    log: Callable[[str], None] = print
    _runtimes: dict[tuple, LLMRuntime] = field(default_factory=dict)
    load_s: dict[str, float] = field(default_factory=dict)

    def runtime(self, quantization: str = "none", engine: str | None = None, **overrides) -> LLMRuntime:
        """The LLM runtime for this (quantization, engine, other `LLMConfig` overrides), loaded on first use.

        Raises whatever loading raises (e.g. UnsupportedQuantization); sections turn that into a
        not-measured row.
        """
        engine = engine or default_engine()
        key = (quantization, engine, *sorted(overrides.items()))
        if key not in self._runtimes:
            values = {"model": self.options.model, "quantization": quantization, "threads": self.options.threads, **overrides}
            if engine is not None:
                values[ENGINE_FIELD] = engine
            start = time.perf_counter()
            self._runtimes[key] = LLMRuntime.from_config(LLMConfig(**values))
            name = "/".join([quantization, engine_label(engine), *(f"{k}={v}" for k, v in sorted(overrides.items()))])
            self.load_s[name] = round(time.perf_counter() - start, 2)
        torch.set_num_threads(self.options.threads)
        return self._runtimes[key]


_TICKETS = itertools.count(1)


def new_question(question: str) -> str:
    """`question` under a ticket number never used before in this process: a prompt that repeats no
    earlier one past the chat template's system prompt, so the prefix cache reuses that (as for any
    new chat) and nothing more."""
    return f"Ticket {next(_TICKETS)}: {question}"


def median_of(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def greedy(max_tokens: int) -> SamplingParams:
    """Greedy, EOS ignored: every run produces exactly `max_tokens` tokens (as vLLM's benchmarks)."""
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def stream_stamps(runtime: LLMRuntime, ids: list[int], new_tokens: int) -> tuple[float, list[float]]:
    """(start, arrival time of each token) for one greedy stream through `LLMRuntime.stream`."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in runtime.stream(input_ids=ids, params=greedy(new_tokens))]
    if len(stamps) != new_tokens:
        raise RuntimeError(f"expected {new_tokens} tokens, the stream gave {len(stamps)}")
    return start, stamps


def decode_rate(stamps: Sequence[float]) -> float:
    """Tokens after the first / time from the first to the last token: decode only, prefill excluded."""
    if len(stamps) < 2:
        raise ValueError("a decode rate needs at least two tokens")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def env_info(threads: int) -> dict:
    import platform

    return {
        "machine": f"{platform.machine()} ({platform.processor() or platform.system()})",
        "cpus": len(os.sched_getaffinity(0)),
        "threads": threads,
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "loadavg_start": round(os.getloadavg()[0], 2),
        "llm_default_engine": default_engine() or "eager (no engine choice in this checkout)",
    }
