"""Dense alignment before distillation: CTC from the projector's soft tokens to the sentence's LLM tokens.

A fresh projector's soft tokens are vectors the LLM has never read. Before the (expensive) stage that
runs the LLM, this stage teaches the projector to put each word's *token embedding* at some soft
token of the clip, through the LLM's own embedding table and without an LLM forward pass (Soundwave,
arXiv 2502.12900, trains such an alignment stage with CTC over the LLM vocabulary; DiVA's second
loss pulls connector outputs to the transcript's token embeddings).

- Logits of soft token h over token v: `scale · cos(h, E[v])` with E the LLM's input embedding table,
  plus a learned blank vector (CTC's "no token here"); only the token ids that occur in the training
  sentences are scored (~10× cheaper than the 49k vocabulary; the direction of h is what is taught).
- A small penalty keeps each soft token's RMS at the embedding table's, the scale the LLM reads.
- 12.5 soft tokens per second against ~3-4 text tokens per second: CTC's length condition holds.

The blank vector and scale are discarded afterwards; the distillation stage (`fusion.batches`) then
teaches what the LLM should make of the soft tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusion.batches import Example, _padded_features
from fusion.feature_augment import with_views

NORM_WEIGHT = 0.1


class Aligner(nn.Module):
    """CTC head over a token subset: the subset's embedding rows (frozen) + a learned blank + scale."""

    def __init__(self, table: torch.Tensor, token_ids: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("ids", torch.tensor(sorted(set(token_ids)), dtype=torch.long))
        self.register_buffer("rows", F.normalize(table[self.ids].float(), dim=-1))
        self.index = {int(t): i + 1 for i, t in enumerate(self.ids.tolist())}  # 0 is the blank
        self.blank = nn.Parameter(torch.randn(table.shape[1]) * 0.02)
        self.log_scale = nn.Parameter(torch.tensor(2.3))  # scale ≈ 10
        self.target_rms = float(table.float().pow(2).mean().sqrt())

    def loss(self, soft: torch.Tensor, lengths: Sequence[int], targets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, dict[str, float]]:
        classes = torch.cat([F.normalize(self.blank, dim=0)[None], self.rows])  # [1 + K, H]
        logits = self.log_scale.exp() * F.normalize(soft.float(), dim=-1) @ classes.T  # [B, T, 1 + K]
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # [T, B, C]
        mapped = [[self.index[t] for t in ids if t in self.index] for ids in targets]
        flat = torch.tensor([c for ids in mapped for c in ids], dtype=torch.long)
        ctc = F.ctc_loss(
            log_probs, flat, torch.tensor(lengths), torch.tensor([len(ids) for ids in mapped]), blank=0, zero_infinity=True
        )
        valid = torch.zeros(soft.shape[:2], dtype=torch.bool, device=soft.device)
        for i, n in enumerate(lengths):
            valid[i, :n] = True
        rms = (soft.float()[valid].pow(2).mean(-1) + 1e-12).sqrt()  # padding excluded before the sqrt
        norm = (rms / self.target_rms - 1).pow(2).mean()
        return ctc + NORM_WEIGHT * norm, {"ctc": ctc.item(), "rms": rms.mean().item() / self.target_rms}


def sentence_ids(tokenizer, examples: Sequence[Example]) -> list[list[int]]:
    """What each clip says, as the LLM's token ids (the text the teacher reads)."""
    return [tokenizer.encode(ex.spoken if ex.spoken is not None else ex.target, add_special_tokens=False) for ex in examples]


def align(
    projector: nn.Module,
    embedding_table: torch.Tensor,
    tokenizer,
    examples: Sequence[Example],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = True,
    log: Callable[[str], None] = print,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    eval_sets: dict[str, Sequence[Example]] | None = None,
) -> list[dict[str, float]]:
    """Train `projector` in place with CTC to the sentences' tokens for `steps` steps; the history.

    `augment(frames, generator)` gives each training clip a fresh view at every step
    (`fusion.feature_augment`); `eval_sets` get their CTC measured at each tenth of the steps (their
    sentences' tokens join the scored classes, so that every held-out token counts; training never
    targets them)."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    ids = sentence_ids(tokenizer, examples)
    held_out = {name: (list(rows), sentence_ids(tokenizer, rows)) for name, rows in (eval_sets or {}).items()}
    every_id = [t for row in ids for t in row] + [t for _, rows in held_out.values() for row in rows for t in row]
    aligner = Aligner(embedding_table.detach(), every_id).to(embedding_table.device)
    params = [*projector.parameters(), *aligner.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    history: list[dict[str, float]] = []
    order: list[int] = []
    projector.train()
    for step in tqdm(range(steps), desc="alignment (CTC)", unit="step", disable=not progress):
        if len(order) < batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        chosen = [examples[i] for i in batch]
        if augment is not None:
            chosen = with_views(chosen, augment, generator)
        frames, lengths = _padded_features(chosen, embedding_table.device)
        soft = projector(frames, lengths)
        out_lengths = [projector.num_output_tokens(n) for n in lengths]
        for group in optimizer.param_groups:  # linear warm-up over the first tenth, then flat
            group["lr"] = lr * min(1.0, (step + 1) / max(1, steps // 10))
        loss, stats = aligner.loss(soft, out_lengths, [ids[i] for i in batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history.append({"align_step": step + 1, **stats})
        if (step + 1) % max(1, steps // 10) == 0:
            if held_out:
                history[-1]["eval_ctc"] = _held_out_ctc(projector, aligner, held_out, batch_size, embedding_table.device)
            log(
                f"alignment step {step + 1}/{steps}: CTC {stats['ctc']:.3f}, soft-token RMS ×{stats['rms']:.2f} of the "
                f"embeddings'" + (f", held-out CTC {history[-1]['eval_ctc']}" if held_out else "")
            )
    return history


@torch.no_grad()
def _held_out_ctc(
    projector: nn.Module,
    aligner: Aligner,
    sets: dict[str, tuple[list[Example], list[list[int]]]],
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """Mean CTC (norm penalty excluded) of each held-out split, its frames as cached."""
    projector.eval()
    try:
        out = {}
        for name, (rows, ids) in sets.items():
            total = 0.0
            for i in range(0, len(rows), batch_size):
                frames, lengths = _padded_features(rows[i : i + batch_size], device)
                soft = projector(frames, lengths)
                _, stats = aligner.loss(soft, [projector.num_output_tokens(n) for n in lengths], ids[i : i + batch_size])
                total += stats["ctc"] * len(rows[i : i + batch_size])
            out[name] = round(total / max(1, len(rows)), 3)
        return out
    finally:
        projector.train()
