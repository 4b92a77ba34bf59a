"""One decode step's rows: which forwards they run in, and the next token each gets.

A seeded request decodes in a forward of its own (its floats must not depend on its neighbours);
plain greedy rows share one argmax; every other row goes through its `AnswerSampler` (bias,
penalties, the grammar's mask), and a row whose constraint gives up ends alone.
"""

from __future__ import annotations

import torch

from modalities.errors import InputError
from modalities.llm.engine.stream import Request


def decode_groups(active: list[Request]) -> list[tuple[int, int]]:
    """(first row, count) per decode forward: one for all the shared rows in a run, one for each
    seeded (batch-invariant) row, which must see the same forward whoever else is decoding."""
    groups: list[tuple[int, int]] = []
    for row, request in enumerate(active):
        if groups and not request.isolated and not active[row - 1].isolated:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((row, 1))
    return groups


def sample_rows(logits: torch.Tensor, requests: list[Request]) -> list[int | None]:
    """Next token per row `[B, V]`: plain greedy rows with one argmax, the others by their sampler
    (None for a row whose constraint gave up: `choose`)."""
    chosen: list[int | None] = torch.argmax(logits, dim=-1).tolist()  # the one host sync per step
    for row, request in enumerate(requests):
        if not (request.params.greedy and request.params.plain):
            chosen[row] = choose(request, logits[row])
    return chosen


def choose(request: Request, logits: torch.Tensor) -> int | None:
    """The request's next token; None when its constraint cannot be met (the client's schema: its
    stream ends with the `InputError`, the rows beside it go on)."""
    try:
        return request.sampler.choose(logits)
    except InputError as e:
        request.refuse(e)
        return None
