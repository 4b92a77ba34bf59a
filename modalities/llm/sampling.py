"""Next-token sampling, on the logits' own device.

Sampling uses a per-request `torch.Generator`: the same seed gives the same tokens (on the same
device and model), independent of any other request running in the process. The parameters
(`SamplingParams`, its limits) live torch-free in `modalities.llm.params`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modalities.errors import InputError
from modalities.llm.params import SEED_RANGE, SamplingParams

__all__ = ["SEED_RANGE", "AnswerSampler", "SamplingParams", "TokenLogprob", "make_generator", "sample_next_token"]


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A generator for this request's random stream (None for greedy, which needs none)."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()  # nondeterministic, but still private to this request
    else:
        generator.manual_seed(params.seed)
    return generator


def sample_next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token.

    logits: `[V]` scores for the next position (any float dtype; computed in float32).
    Returns a 0-d long tensor on the logits' device (no host sync here; the caller decides when).
    """
    assert logits.dim() == 1, f"expected [V] logits, got {tuple(logits.shape)}"
    if params.greedy:
        return torch.argmax(logits)
    scaled = logits.float() / params.temperature
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        probs = _top_p_filter(probs, params.top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator)[0]


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the nucleus: `[V]` probabilities in, `[V]` unnormalised weights out."""
    sorted_probs, order = torch.sort(probs, descending=True)
    # A token stays if the mass *before* it is still short of top_p; so the top token always stays.
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(0, order, sorted_probs)


# A constrained answer's last tokens (a sixth of its budget, within these bounds, plus a few per level
# still open) steer it to finish: a required key still to come costs ~6-8 tokens of forced markup.
MIN_CLOSING_RESERVE = 24
MAX_CLOSING_RESERVE = 128
CLOSING_TOKENS_PER_LEVEL = 6  # to close one open level: a required key and a short value, then } or ]


class JsonDepth:
    """How deep the JSON written so far nests (objects and lists open outside strings), byte by byte."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self._escaped = False

    def push(self, data: bytes) -> None:
        for byte in data:
            if self.in_string:
                if self._escaped:
                    self._escaped = False
                elif byte == 0x5C:  # backslash
                    self._escaped = True
                elif byte == 0x22:  # quote
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
            elif byte in (0x7B, 0x5B):  # { [
                self.depth += 1
            elif byte in (0x7D, 0x5D) and self.depth:  # } ]
                self.depth -= 1


@dataclass(frozen=True)
class TokenLogprob:
    """A chosen token's log-probability and the most likely alternatives (`top`: (id, logprob))."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class AnswerSampler:
    """Chooses one answer's tokens: logit bias, presence/frequency penalties, the grammar's mask,
    then temperature/top_p (or argmax) with the answer's own generator; records log-probabilities.

    matcher: an llguidance matcher (`modalities.llm.grammar`) the answer must stay inside, or None.
    A decode loop calls `start` when it samples the first token and `choose` for every token, on
    its own thread; `logprobs` grows by one entry per chosen token (before the token is handed to
    the consumer, so the consumer can read entry i once it has token i).
    """

    def __init__(
        self,
        params: SamplingParams,
        matcher: Any = None,
        vocab_size: int = 0,
        closing: torch.Tensor | None = None,
        call_openers: frozenset[int] = frozenset(),
        token_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        if (matcher is None) != (params.constraint is None) or (matcher is not None and vocab_size < 1):
            raise ValueError("a constrained answer needs its matcher and the matcher's vocabulary size")
        self.params = params
        self.matcher = matcher
        self.vocab_size = vocab_size  # the matcher's (the tokenizer's); logits past it are masked
        # [2, vocab_size] biases towards tokens that close what is open, outside and inside a JSON
        # string (`GrammarCompiler.closing_bias`),
        # applied over the last tokens of the budget: `closing_reserve`, plus a few per level of
        # nesting still open (`_depth`, read from each chosen token's bytes).
        self.closing = closing
        self._token_bytes = token_bytes
        self._depth = JsonDepth()
        self.budget = params.max_tokens
        self.chosen = 0
        # `auto` tool choice: a text answer (it cannot start with '<', the call's opening) is prose,
        # never steered; a call is.
        constraint = params.constraint
        self._text_or_call = constraint is not None and constraint.kind == "tool_calls" and constraint.data["mode"] == "auto"
        self._call_openers = call_openers  # tokens that can begin a call (`GrammarCompiler.call_openers`)
        self.generator: torch.Generator | None = None
        self.logprobs: list[TokenLogprob] = []
        self._counts: torch.Tensor | None = None  # generated tokens per vocabulary entry (penalties)
        self._bitmask: torch.Tensor | None = None
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None  # `logit_bias` as tensors

    @property
    def plain(self) -> bool:
        return self.params.plain

    def start(self, device: torch.device, budget: int | None = None) -> None:
        """Before the first token; `budget`: the most tokens the decode loop will ask for."""
        self.generator = make_generator(self.params, device)
        self.budget = budget or self.params.max_tokens

    @property
    def closing_reserve(self) -> int:
        return min(MAX_CLOSING_RESERVE, max(MIN_CLOSING_RESERVE, self.budget // 6))

    def _closing_cost(self) -> int:
        """Tokens that closing the open objects and lists may take (a required key each, say)."""
        return CLOSING_TOKENS_PER_LEVEL * self._depth.depth

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from `[V]` logits (left untouched)."""
        params = self.params
        if params.plain:
            return int(sample_next_token(logits, params, self.generator))
        scores = logits.float().clone()
        if params.logit_bias:
            ids, bias = self._logit_bias(scores)
            scores.index_add_(0, ids, bias)
        if self._counts is not None:
            scores -= self._counts * params.frequency_penalty + (self._counts > 0) * params.presence_penalty
        if self.matcher is not None:
            self._apply_mask(scores)
            undecided = self._text_or_call and self.chosen == 0  # `auto`: text or call is the model's choice
            if self.closing is not None and not undecided and self.budget - self.chosen <= self.closing_reserve + self._closing_cost():
                # The budget is nearly spent: an answer still open would be cut short, invalid.
                # Where the grammar allows it, close what is open (a string, a list, an object).
                scores[: self.vocab_size] += self.closing[int(self._depth.in_string)].to(scores.device)
        token = int(sample_next_token(scores, params, self.generator))
        self.chosen += 1
        if self.closing is not None and self._token_bytes is not None:
            self._depth.push(self._token_bytes(token))
        if self._text_or_call and self.chosen == 1 and token not in self._call_openers:
            self.closing = None  # a text answer
        if params.logprobs:
            self.logprobs.append(_logprob(logits, token, params.top_logprobs))
        if params.presence_penalty or params.frequency_penalty:
            if self._counts is None:
                self._counts = torch.zeros(scores.shape[0], device=scores.device)
            self._counts[token] += 1
        if self.matcher is not None and not self.matcher.consume_token(token):
            raise self._gave_up()
        return token

    def _logit_bias(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`logit_bias` as (ids, values) tensors, built at the first token (the runtime has checked
        every id against the vocabulary; one past the logits' width is dropped)."""
        if self._bias is None:
            pairs = [(t, b) for t, b in self.params.logit_bias if t < scores.shape[0]]
            ids = torch.tensor([t for t, _ in pairs], dtype=torch.long, device=scores.device)
            self._bias = (ids, torch.tensor([b for _, b in pairs], dtype=scores.dtype, device=scores.device))
        return self._bias

    def _gave_up(self) -> InputError:
        """The grammar itself failed (llguidance's limits, a grammar with no way on): the client's
        constraint cannot be met, a 400 naming it (or an error event once the stream has begun)."""
        constraint = self.params.constraint
        return InputError(
            f"the answer cannot follow {constraint.param}: {self.matcher.get_error()[:200]}",
            param=constraint.param,
            code="invalid_schema",
        )

    def _apply_mask(self, scores: torch.Tensor) -> None:
        """Every token the grammar does not allow next gets -inf. The bitmask (bit j of 32-bit word w
        allows token 32w+j) is unpacked with numpy: llguidance's torch helper runs a torch.compile'd
        kernel that costs ~4 ms a call on this CPU, a quarter of a decode step; this costs ~0.1 ms."""
        import llguidance.torch as ll_torch

        if self._bitmask is None:
            self._bitmask = ll_torch.allocate_token_bitmask(1, self.vocab_size)
        ll_torch.fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        if self.matcher.is_error():  # it then allows only EOS: the answer would end cut, as if done
            raise self._gave_up()
        bits = np.unpackbits(self._bitmask.numpy().view(np.uint8), bitorder="little")[: self.vocab_size]
        allowed = torch.from_numpy(bits).to(device=scores.device, dtype=torch.bool)
        scores[: self.vocab_size].masked_fill_(~allowed, float("-inf"))
        scores[self.vocab_size :] = float("-inf")


def _logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    alternatives: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = torch.topk(logprobs, top)
        alternatives = tuple(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token, float(logprobs[token]), alternatives)
