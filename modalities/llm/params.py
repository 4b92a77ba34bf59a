"""Generation parameters and their limits, torch-free (the HTTP ingress validates requests with them).

`SamplingParams` validates itself on construction and raises `InputError` with `param` naming the
offending field, so the serving layer reports a bad request exactly like a bad media file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modalities.errors import InputError
from modalities.llm.constraint import Constraint

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
PENALTY_RANGE = (-2.0, 2.0)  # OpenAI's presence_penalty / frequency_penalty
LOGIT_BIAS_RANGE = (-100.0, 100.0)  # OpenAI's: -100 bans a token, 100 all but forces it
MAX_LOGIT_BIAS = 300  # entries (OpenAI's limit)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    temperature: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    top_p: nucleus sampling: sample from the smallest set of tokens whose probability mass reaches it.
    seed: fixes the sampler's random stream; None draws a fresh one per request.
    max_tokens: most tokens to generate (fewer if the context window fills first).
    stop: up to four strings; generation ends before the first one appears and it is not returned.
    ignore_eos: keep going past end-of-sequence tokens until max_tokens (benchmarks; as in vLLM).
    presence_penalty, frequency_penalty: OpenAI's: each generated token's logit is lowered by
        `presence_penalty` once it has appeared in the answer and by `frequency_penalty` per
        appearance (the prompt does not count, as in vLLM).
    logit_bias: (token id, bias) pairs added to the logits before sampling (-100 bans a token).
    logprobs: return each chosen token's log-probability (of the model's raw distribution, before
        temperature, penalties, bias and constraints: vLLM's default), and `top_logprobs` alternatives.
    constraint: a grammar every generated token must keep the answer inside (`Constraint`).
    """

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    stop: Sequence[str] = ()  # a list or a single string is accepted; stored as a tuple
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Sequence[tuple[int, float]] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    constraint: Constraint | None = None

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
        self._check_controls()

    def _check_controls(self) -> None:
        """Penalties, logit bias, logprobs and the constraint (the newer OpenAI controls)."""
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not PENALTY_RANGE[0] <= value <= PENALTY_RANGE[1]:
                raise _invalid(f"{name} must be a number in [{PENALTY_RANGE[0]:g}, {PENALTY_RANGE[1]:g}]", name)
        bias = tuple(self.logit_bias.items()) if isinstance(self.logit_bias, dict) else tuple(self.logit_bias)
        if len(bias) > MAX_LOGIT_BIAS:
            raise _invalid(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens", "logit_bias")
        for token, value in bias:
            if not _is_int(token) or token < 0:
                raise _invalid("logit_bias keys must be token ids (integers >= 0)", "logit_bias")
            if not _is_number(value) or not LOGIT_BIAS_RANGE[0] <= value <= LOGIT_BIAS_RANGE[1]:
                raise _invalid(f"logit_bias values must be in [{LOGIT_BIAS_RANGE[0]:g}, {LOGIT_BIAS_RANGE[1]:g}]", "logit_bias")
        object.__setattr__(self, "logit_bias", tuple((int(t), float(v)) for t, v in bias))
        if not isinstance(self.logprobs, bool):
            raise _invalid("logprobs must be a boolean", "logprobs")
        if not _is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise _invalid(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}]", "top_logprobs")
        if self.top_logprobs and not self.logprobs:
            raise _invalid("top_logprobs needs logprobs: true", "top_logprobs")
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise _invalid("constraint must be a Constraint", "constraint")
        if self.constraint is not None and self.ignore_eos:  # a finished grammar allows only EOS
            raise _invalid("ignore_eos cannot be combined with a constraint", "ignore_eos")
        if self.constraint is not None and self.stop and self.constraint.structured:
            # A stop string would cut the structure short: an invalid answer reported as finished.
            raise _invalid("stop sequences cannot be combined with tools, response_format or chorus constraints", "stop")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def plain(self) -> bool:
        """Nothing to do to the logits but temperature and top_p (the batched engine's fast path)."""
        return not (
            self.presence_penalty or self.frequency_penalty or self.logit_bias or self.logprobs or self.constraint
        )

    @property
    def batch_invariant(self) -> bool:
        """A seeded request decodes in forwards of its own, so its answer cannot depend on which other
        requests share the engine (floating-point results of a batched forward do)."""
        return self.seed is not None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _invalid(message: str, param: str) -> InputError:
    return InputError(message, param=param, code=INVALID_PARAM_CODE)
