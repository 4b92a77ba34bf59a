"""Generation parameters and their limits, torch-free (the HTTP ingress validates requests with them).

`SamplingParams` validates itself on construction and raises `InputError` with `param` naming the
offending field, so the serving layer reports a bad request exactly like a bad media file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modalities.errors import InputError

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default
DEFAULT_TOP_P = 1.0
INVALID_PARAM_CODE = "invalid_request_error"
# A positive temperature below this is served as 0 (greedy): sampling at it differs from greedy only
# between near-tied logits, and dividing float32 logits by a tiny one (3e-295, found by schemathesis)
# overflows to inf, which softmax turns into NaN probabilities.
MIN_SAMPLING_TEMPERATURE = 1e-4
# A positive top_p below this is served as this (both keep only the most likely token): a denormal
# one (5e-324) rounds to 0 against float32 probabilities and masks every token.
MIN_TOP_P = 1e-6
# Seeds seed a torch.Generator, which takes a 64-bit integer.
SEED_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    temperature: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    top_p: nucleus sampling: sample from the smallest set of tokens whose probability mass reaches it.
    seed: fixes the sampler's random stream; None draws a fresh one per request.
    max_tokens: most tokens to generate (fewer if the context window fills first).
    stop: up to four strings; generation ends before the first one appears and it is not returned.
    ignore_eos: keep going past end-of-sequence tokens until max_tokens (benchmarks; as in vLLM).
    """

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    stop: Sequence[str] = ()  # a list or a single string is accepted; stored as a tuple
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise _invalid("temperature must be a finite number >= 0", "temperature")
        if not _is_number(self.top_p) or not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise _invalid("top_p must be in (0, 1]", "top_p")
        if self.seed is not None and not (_is_int(self.seed) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]):
            raise _invalid("seed must be a 64-bit integer", "seed")
        if 0 < self.temperature < MIN_SAMPLING_TEMPERATURE:
            object.__setattr__(self, "temperature", 0.0)
        if self.top_p < MIN_TOP_P:
            object.__setattr__(self, "top_p", MIN_TOP_P)
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise _invalid("max_tokens must be an integer >= 1", "max_tokens")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stop) > MAX_STOP_SEQUENCES:
            raise _invalid(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", "stop")
        if any(not isinstance(s, str) or not s for s in stop):
            raise _invalid("stop sequences must be non-empty strings", "stop")
        if not isinstance(self.ignore_eos, bool):
            raise _invalid("ignore_eos must be a boolean", "ignore_eos")
        object.__setattr__(self, "stop", stop)  # normalised: always a tuple of str

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _invalid(message: str, param: str) -> InputError:
    return InputError(message, param=param, code=INVALID_PARAM_CODE)
