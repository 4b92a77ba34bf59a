"""What an answer rested on: attention shares and ablations per input kind, in one batched pass.

Given the prompt's embeddings (text and spliced media), the answer's token ids and which prompt
positions belong to which input kind, one forward pass over `1 + K` rows (the prompt + answer as
sent, then once per kind with that kind's positions removed) gives:

- **attention share** per kind: the attention mass the answer's tokens put on the kind's positions,
  summed over every layer and head (all weighted alike) and over the answer's tokens, divided by the
  mass on all kinds' positions (template markup and the answer's own tokens are left out, so the
  shares sum to 1). Row 0 only.
- **ablation delta** per kind: log p(answer | prompt without the kind) − log p(answer | prompt). A
  kind is removed by masking its positions out of every row's attention and renumbering the positions
  after them (RoPE), which is exactly the prompt with those tokens deleted; ≤ 0 means it helped.
- **relevance** per prompt position: row 0's attention mass on it (the same sums), for segments.

Pure torch over a transformers causal LM whose attention runs through `explain_attention`
(registered as the "chorus_explain" implementation); no Ray.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ATTENTION = "chorus_explain"
LOGPROB_CHUNK = 64  # answer positions per lm_head chunk: logits over a 49k vocabulary are the big tensor


@dataclass
class _Capture:
    """What the attention layers read and write during one explanation pass."""

    keep: torch.Tensor  # [B, N] bool: the positions each row may attend to
    first_query: int  # row 0's first answer query (the prompt's last position)
    mass: torch.Tensor  # [N] row 0's answer-query attention mass per key position, summed
    layers: int = 0


_state = threading.local()


def explain_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention over the capture's kept positions (transformers' mask is not used), writing
    row 0's answer-query attention mass into the capture."""
    capture: _Capture = _state.capture
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    n = query.shape[2]
    causal = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
    allowed = causal.unsqueeze(0) & capture.keep[:, None, :]  # [B, N, N]
    allowed |= torch.eye(n, dtype=torch.bool, device=query.device).unsqueeze(0)  # a removed query still sees itself
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed.unsqueeze(1), scale=scaling)
    rows = query[0, :, capture.first_query :, :]  # [H, A, D]
    scores = (rows @ key[0].transpose(-1, -2)) * (scaling if scaling is not None else rows.shape[-1] ** -0.5)
    scores = scores.masked_fill(~allowed[0, capture.first_query :].unsqueeze(0), float("-inf"))
    capture.mass += scores.float().softmax(dim=-1).sum(dim=(0, 1))
    capture.layers += 1
    return output.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, explain_attention)


@dataclass
class Explained:
    """One explanation's figures, by kind and by prompt position."""

    attention_share: dict[str, float]
    ablation_delta: dict[str, float]
    tokens: dict[str, int]
    position_mass: torch.Tensor  # [P] row 0's answer attention on each prompt position (all kinds)
    answer_logprob: float
    answer_tokens: int
    layers: int
    heads: int
    rows: int
    cost_ms: float
    method: dict = field(default_factory=dict)


@torch.inference_mode()
def explain(
    model: torch.nn.Module,
    prompt_embeds: torch.Tensor,
    answer_ids: Sequence[int],
    kinds: Mapping[str, Sequence[int]],
) -> Explained:
    """Explain `answer_ids` given `prompt_embeds` ([1, P, H]) in one batched forward pass.

    `kinds` maps each input kind present to its prompt positions (disjoint, < P). `model` is a
    transformers causal LM loaded with `attn_implementation="chorus_explain"`.
    """
    started = time.perf_counter()
    if not answer_ids:
        raise ValueError("nothing to explain: the answer has no tokens")
    kinds = {kind: sorted(set(positions)) for kind, positions in kinds.items() if positions}
    prompt_len = prompt_embeds.shape[1]
    embedding = model.get_input_embeddings()
    dtype = embedding.weight.dtype
    answer = torch.tensor(list(answer_ids), dtype=torch.long, device=prompt_embeds.device)
    # the answer's last token is only scored, never read
    sequence = torch.cat([prompt_embeds.to(dtype), embedding(answer[:-1]).unsqueeze(0)], dim=1)
    n = sequence.shape[1]
    names = list(kinds)
    keep = torch.ones(1 + len(names), n, dtype=torch.bool, device=sequence.device)
    for row, kind in enumerate(names, start=1):
        keep[row, kinds[kind]] = False
    position_ids = keep.long().cumsum(dim=1) - 1  # the positions after a removed span close up
    capture = _Capture(keep=keep, first_query=prompt_len - 1, mass=torch.zeros(n, dtype=torch.float32))
    _state.capture = capture
    try:
        hidden = model.model(
            inputs_embeds=sequence.expand(keep.shape[0], -1, -1).contiguous(), position_ids=position_ids, use_cache=False
        ).last_hidden_state
    finally:
        _state.capture = None
    logprobs = _answer_logprobs(model, hidden[:, prompt_len - 1 :], answer)  # [B]
    mass = capture.mass[:prompt_len]
    per_kind = {kind: float(mass[positions].sum()) for kind, positions in kinds.items()}
    total = sum(per_kind.values())
    shares = {kind: (value / total if total > 0 else 1.0 / len(per_kind)) for kind, value in per_kind.items()}
    deltas = {kind: float(logprobs[row] - logprobs[0]) for row, kind in enumerate(names, start=1)}
    config = model.config
    return Explained(
        attention_share=shares,
        ablation_delta=deltas,
        tokens={kind: len(positions) for kind, positions in kinds.items()},
        position_mass=mass,
        answer_logprob=float(logprobs[0]),
        answer_tokens=len(answer),
        layers=capture.layers,
        heads=config.num_attention_heads,
        rows=keep.shape[0],
        cost_ms=(time.perf_counter() - started) * 1000,
    )


def _answer_logprobs(model: torch.nn.Module, hidden: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """Each row's log p(answer): `hidden` [B, A, H] are the states that predict answer tokens 0..A-1."""
    total = torch.zeros(hidden.shape[0], dtype=torch.float64)
    head = model.get_output_embeddings()
    for start in range(0, answer.shape[0], LOGPROB_CHUNK):
        logits = head(hidden[:, start : start + LOGPROB_CHUNK]).float()
        picked = answer[start : start + LOGPROB_CHUNK]
        lp = logits.log_softmax(dim=-1).gather(-1, picked.expand(hidden.shape[0], -1).unsqueeze(-1)).squeeze(-1)
        total += lp.sum(dim=1).double()
    return total


def load_explainer(source: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The float model behind an engine, for explanations: loaded on the first explained request."""
    from transformers import AutoModelForCausalLM

    register_attention()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=ATTENTION)
    return model.eval().requires_grad_(False)
