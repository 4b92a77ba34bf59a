"""Training turns → padded batches and the projector's loss (used by `fusion.train` and the evals).

Each example is one chat turn built with `fusion.prompt.build_prompt` exactly as serve builds it
(the user's text part and the media part, the model's own chat template), the media slot filled by
the projector's soft tokens, followed by the target text and the end-of-turn token. Loss:

- next-token cross-entropy on the target tokens only, and optionally
- `distill`: KL(teacher ‖ student) on the same target tokens, the teacher being the same LLM reading
  the sentence as text (`transcript` mode) — Ultravox v0.7's recipe. The sentence text stands in
  for Whisper's transcript (Whisper base reads espeak-ng speech at a few % WER). Audio only: an
  image has no text form to teach from.

Only the target positions go through the LM head (its 49k-vocabulary matmul is a fifth of the
forward cost on SmolLM2-135M); the LLM's weights need no gradients, only its activations do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import InitVar, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fusion.prompt import MediaItem, MediaKind, Message, build_prompt, splice

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"
MEDIA_INDEX = 0  # every training example carries one media item


@dataclass
class Example:
    """One training turn: the media item's features, the instruction, and the text to predict."""

    features: torch.Tensor  # [T, d_audio] Whisper frames or [N, d_vision] CLIP patches
    target: str
    instruction: str
    transcript: str | None = None
    media_first: bool = False  # the media part before the instruction
    kind: MediaKind = "audio"
    spoken: str | None = None  # what the clip says, when the target is not it (an answer to it)
    audio_first: InitVar[bool | None] = None  # the earlier name of media_first

    def __post_init__(self, audio_first: bool | None) -> None:
        if audio_first is not None:
            self.media_first = audio_first


def _messages(example: Example, transcript: str | None = None) -> list[Message]:
    media = MediaItem(example.kind, MEDIA_INDEX, transcript)
    parts = [media, example.instruction] if example.media_first else [example.instruction, media]
    return [Message("user", [p for p in parts if p != ""])]  # no instruction: the clip is the whole turn


def _target_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text + END_OF_TURN, add_special_tokens=False)


def _padded_features(examples: Sequence[Example], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """The examples' features zero-padded to the longest, float32 `[B, T_max, d]`, and their lengths."""
    lengths = [ex.features.shape[0] for ex in examples]
    frames = torch.zeros(len(examples), max(lengths), examples[0].features.shape[-1], device=device)
    for i, ex in enumerate(examples):
        frames[i, : lengths[i]] = ex.features.to(device=device, dtype=torch.float32)
    return frames, lengths


def build_inputs(
    examples: Sequence[Example],
    projector: nn.Module | None,
    model: nn.Module,
    tokenizer,
    mode: str = "embed",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded batch: `inputs_embeds [B, L, H]`, `attention_mask [B, L]`, `labels [B, L]`
    (IGNORE_INDEX except on target tokens, aligned so that position i predicts labels[i]).

    `mode="transcript"` builds the teacher's text-only prompt (the target text as transcript)."""
    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    media: list[torch.Tensor | None] = [None] * len(examples)
    if mode == "embed":
        assert projector is not None
        frames, lengths = _padded_features(examples, device)
        # One batched projector call; `lengths` lets a projector keep the padding out of real tokens.
        projected = projector(frames, lengths)
        media = [projected[i, : projector.num_output_tokens(n)] for i, n in enumerate(lengths)]
    rows = [_turn_row(ex, soft, embedding, tokenizer, mode) for ex, soft in zip(examples, media)]
    return _pad_rows(rows, device)


def _turn_row(
    example: Example, soft: torch.Tensor | None, embedding: nn.Module, tokenizer, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One turn's input embeddings `[L, H]` (prompt, media spliced in, then the target) and its
    labels `[L]`: the target tokens, one position early; IGNORE_INDEX elsewhere."""
    device = embedding.weight.device
    said = example.spoken if example.spoken is not None else example.target
    plan = build_prompt(_messages(example, said if mode == "transcript" else None), tokenizer, mode)
    text_pieces = [p for p in plan.pieces if isinstance(p, list)]
    with torch.no_grad():
        text_embeds = [embedding(torch.tensor(ids, dtype=torch.long, device=device)) for ids in text_pieces]
    media_embeds = {MEDIA_INDEX: soft.to(text_embeds[0].dtype)} if soft is not None else {}
    prompt, _mask, _counts = splice(plan, text_embeds, media_embeds)
    target = _target_ids(tokenizer, example.target)
    with torch.no_grad():
        target_embeds = embedding(torch.tensor(target, dtype=torch.long, device=device))
    # Position t predicts token t+1: the last prompt position predicts the first target token.
    prompt_len = prompt.shape[1]
    labels = torch.full((prompt_len + len(target),), IGNORE_INDEX, dtype=torch.long)
    labels[prompt_len - 1 : prompt_len - 1 + len(target)] = torch.tensor(target)
    return torch.cat([prompt[0], target_embeds], dim=0), labels


def _pad_rows(
    rows: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(embeddings, labels) rows → right-padded `inputs [B, L, H]`, `mask [B, L]`, `labels [B, L]`."""
    longest = max(row.shape[0] for row, _ in rows)
    first = rows[0][0]
    inputs = first.new_zeros(len(rows), longest, first.shape[1])
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    for i, (row, lab) in enumerate(rows):
        inputs[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
        labels[i, : lab.shape[0]] = lab
    return inputs, mask.to(device), labels.to(device)


def target_logits(model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits `[N, V]` at the N labelled positions only, in row-major order."""
    return _target_outputs(model, inputs, mask, labels)[0]


def _target_outputs(model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits `[N, V]` at the labelled positions, last hidden state `[B, H]` at each row's final
    prompt position — the position that predicts the first target token)."""
    hidden = model.base_model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
    labelled = labels != IGNORE_INDEX
    first = labelled.float().argmax(dim=1)  # the first labelled position of each row
    final_prompt = hidden[torch.arange(hidden.shape[0], device=hidden.device), first.to(hidden.device)]
    return model.get_output_embeddings()(hidden[labelled]), final_prompt


def projector_loss(
    examples: Sequence[Example],
    projector: nn.Module,
    model: nn.Module,
    tokenizer,
    distill_weight: float = 0.0,
    ce_weight: float = 1.0,
    hidden_weight: float = 0.0,
    kl_temperature: float = 1.0,
    split_turns: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ce_weight × cross-entropy on the target tokens, plus, against the teacher (the same LLM
    reading what was said as text): distill_weight × KL(teacher ‖ student) over the target positions
    at `kl_temperature` (Ultravox), and hidden_weight × the squared distance between the last hidden
    states at the final prompt position, relative to the teacher's norm (DiVA).

    `split_turns`: the teacher terms (KL, hidden) on answer turns only and cross-entropy on repeat
    turns only — a small teacher answers when asked to repeat, so its distribution there is the
    wrong target, while the sentence itself is the right one (Ultravox's transcription turns use CE)."""
    inputs, mask, labels = build_inputs(examples, projector, model, tokenizer, "embed")
    logits, final = _target_outputs(model, inputs, mask, labels)
    targets = labels[labels != IGNORE_INDEX]
    answer_rows = torch.tensor([ex.spoken is not None for ex in examples], device=labels.device)
    everywhere = torch.ones(len(examples), dtype=torch.bool, device=labels.device)
    ce_rows, teacher_rows = (~answer_rows, answer_rows) if split_turns else (everywhere, everywhere)
    row_of = (labels != IGNORE_INDEX).nonzero()[:, 0]  # the row of each labelled position
    ce_at, teacher_at = ce_rows[row_of], teacher_rows[row_of]
    zero = logits.new_zeros((), dtype=torch.float32)
    ce = F.cross_entropy(logits[ce_at].float(), targets[ce_at]) if bool(ce_at.any()) else zero
    stats = {"ce": ce.item()}
    loss = ce_weight * ce
    if (distill_weight > 0 or hidden_weight > 0) and bool(teacher_rows.any()):
        # The teacher reads only the rows its terms use (with split turns, the answer turns).
        taught = [ex for ex, used in zip(examples, teacher_rows.tolist()) if used]
        with torch.no_grad():
            t_inputs, t_mask, t_labels = build_inputs(taught, None, model, tokenizer, "transcript")
            teacher, t_final = _target_outputs(model, t_inputs, t_mask, t_labels)
        student = logits[teacher_at]
        assert teacher.shape == student.shape, f"teacher {tuple(teacher.shape)} vs student {tuple(student.shape)}"
        if distill_weight > 0:
            t = kl_temperature
            student_lp = F.log_softmax(student.float() / t, -1)
            kl = F.kl_div(student_lp, F.log_softmax(teacher.float() / t, -1), log_target=True, reduction="batchmean")
            loss = loss + distill_weight * kl
            stats["kl"] = kl.item()
        if hidden_weight > 0:
            t_final = t_final.float()
            hidden = ((final[teacher_rows].float() - t_final).pow(2).sum(-1) / t_final.pow(2).sum(-1)).mean()
            loss = loss + hidden_weight * hidden
            stats["hidden"] = hidden.item()
    else:  # no turn for the teacher in this batch
        stats.update({name: 0.0 for name, weight in (("kl", distill_weight), ("hidden", hidden_weight)) if weight > 0})
    stats["loss"] = loss.item()
    return loss, stats


@torch.no_grad()
def eval_loss(projector: nn.Module, model: nn.Module, tokenizer, examples: Sequence[Example], batch_size: int) -> float:
    """Mean teacher-forced cross-entropy on the target tokens (token-weighted)."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        inputs, mask, labels = build_inputs(batch, projector, model, tokenizer, "embed")
        logits = target_logits(model, inputs, mask, labels)
        targets = labels[labels != IGNORE_INDEX]
        total += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        count += targets.numel()
    return round(total / max(1, count), 4)


@torch.no_grad()
def match_output_norm(projector: nn.Module, model: nn.Module, sample: Sequence[Example]) -> float:
    """Scale the projector's last linear layer so its outputs have the token embeddings' RMS.

    A fresh projector emits vectors at a scale unrelated to the embedding table's; SmolLM2's
    embeddings are small (RMS ≈ 0.1 per dimension), so starting at their scale avoids the first
    hundreds of steps being spent shrinking the outputs. Returns the factor applied."""
    table = model.get_input_embeddings().weight.float()
    target_rms = table.pow(2).mean().sqrt()
    frames, lengths = _padded_features(sample, table.device)
    projected = projector(frames, lengths)
    real = torch.cat([projected[i, : projector.num_output_tokens(n)] for i, n in enumerate(lengths)])
    out_rms = real.pow(2).mean().sqrt()
    factor = float(target_rms / out_rms)
    if hasattr(projector, "output_scale"):  # a projector with a fixed output scale keeps its weights
        projector.output_scale.mul_(factor)
    else:
        projector.linear_2.weight.mul_(factor)
    return factor
