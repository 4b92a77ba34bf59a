"""Projector training on cached encoder features: the encoder and the LLM frozen, the projector trained.

One loop serves both modalities (`TrainConfig.modality`):

- `audio`: a `stack{k}_swiglu` projector on Whisper frames, target = the spoken sentence
  (`fusion.speech_data`);
- `image`: an `mlp2x_gelu` projector (LLaVA-1.5) on CLIP patch features, target = the image's caption
  (`fusion.vision_data`).

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

import json
import math
import random
import time
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from fusion.prompt import MediaItem, MediaKind, Message, build_prompt, splice
from fusion.projectors import build_projector

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"
MEDIA_INDEX = 0  # every training example carries one media item
AUDIO_FIRST_SHARE = 0.2  # some requests put the clip before the instruction
IMAGE_PROJECTOR = "mlp2x_gelu"  # LLaVA-1.5's; serve builds the same kind for images
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"


class TrainConfig(BaseModel):
    """One projector training run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str = Field(description="Speech corpus (`chorus make-speech-data`) or image set (`chorus make-vision-data`)")
    out_dir: str = Field(description="Run directory: train state (resume), log, projector checkpoints")
    modality: Literal["audio", "image"] = Field(
        "audio", description="audio: stack{k}_swiglu on Whisper frames; image: mlp2x_gelu on CLIP patches"
    )
    stack: int = Field(4, ge=1, description="Whisper frames per soft token (`stack{k}_swiglu`; audio only)")
    steps: int = Field(1000, ge=1, description="Optimizer steps in total (a resumed run continues the count)")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay)")
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    distill: bool = Field(False, description="Add KL to the LLM reading the text (teacher) on target tokens")
    distill_weight: float = Field(1.0, ge=0)
    match_embedding_norm: bool = Field(
        True, description="Scale the projector's last layer at init so its outputs have the RMS of the LLM's token embeddings"
    )
    eval_every: int = Field(200, ge=1, description="Held-out loss every this many steps")
    eval_clips: int = Field(32, ge=1, description="Clips per held-out split for the periodic eval loss")
    checkpoint_every: int = Field(50, ge=1, description="Save train state (for resume) every this many steps")
    max_minutes: float | None = Field(None, gt=0, description="Stop after this long, state saved (resume later)")
    llm_dtype: str = Field(
        "bfloat16",
        pattern="^(float32|bfloat16)$",
        description="dtype of the frozen LLM during training (the projector stays float32). bfloat16 measured "
        "1.8x faster per step than float32 on this CPU (AVX512-BF16); serve runs the projector in float32",
    )
    threads: int = Field(2, ge=1)
    device: str = Field("cpu", description="torch device of the frozen LLM and the projector, e.g. 'cpu', 'cuda'")
    seed: int = Field(0)

    @model_validator(mode="after")
    def _distill_needs_text(self) -> "TrainConfig":
        if self.distill and self.modality != "audio":
            raise ValueError("distill needs a text form of the media (a transcript); only audio has one")
        return self

    @property
    def projector_kind(self) -> str:
        return f"stack{self.stack}_swiglu" if self.modality == "audio" else IMAGE_PROJECTOR


@dataclass
class Example:
    """One training turn: the media item's features, the instruction, and the text to predict."""

    features: torch.Tensor  # [T, d_audio] Whisper frames or [N, d_vision] CLIP patches
    target: str
    instruction: str
    transcript: str | None = None
    media_first: bool = False  # the media part before the instruction
    kind: MediaKind = "audio"
    audio_first: InitVar[bool | None] = None  # the earlier name of media_first

    def __post_init__(self, audio_first: bool | None) -> None:
        if audio_first is not None:
            self.media_first = audio_first


# --- batches and loss --------------------------------------------------------------------------------


def _messages(example: Example, transcript: str | None = None) -> list[Message]:
    media = MediaItem(example.kind, MEDIA_INDEX, transcript)
    parts = [media, example.instruction] if example.media_first else [example.instruction, media]
    return [Message("user", parts)]


def _target_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text + END_OF_TURN, add_special_tokens=False)


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
        lengths = [ex.features.shape[0] for ex in examples]
        frames = torch.zeros(len(examples), max(lengths), examples[0].features.shape[-1], device=device)
        for i, ex in enumerate(examples):
            frames[i, : lengths[i]] = ex.features.to(device=device, dtype=torch.float32)
        # One batched projector call: zero frames past a clip's end only touch tokens that are cut off.
        projected = projector(frames)
        media = [projected[i, : projector.num_output_tokens(n)] for i, n in enumerate(lengths)]

    rows, label_rows = [], []
    for ex, soft in zip(examples, media):
        plan = build_prompt(_messages(ex, ex.target if mode == "transcript" else None), tokenizer, mode)
        text_pieces = [p for p in plan.pieces if isinstance(p, list)]
        with torch.no_grad():
            text_embeds = [embedding(torch.tensor(ids, dtype=torch.long, device=device)) for ids in text_pieces]
        media_embeds = {MEDIA_INDEX: soft.to(text_embeds[0].dtype)} if soft is not None else {}
        prompt, _mask, _counts = splice(plan, text_embeds, media_embeds)
        target = _target_ids(tokenizer, ex.target)
        with torch.no_grad():
            target_embeds = embedding(torch.tensor(target, dtype=torch.long, device=device))
        rows.append(torch.cat([prompt[0], target_embeds], dim=0))
        # Position t predicts token t+1: the last prompt position predicts the first target token.
        prompt_len = prompt.shape[1]
        labels = torch.full((prompt_len + len(target),), IGNORE_INDEX, dtype=torch.long)
        labels[prompt_len - 1 : prompt_len - 1 + len(target)] = torch.tensor(target)
        label_rows.append(labels)

    longest = max(r.shape[0] for r in rows)
    hidden = rows[0].shape[1]
    inputs = rows[0].new_zeros(len(rows), longest, hidden)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    for i, (row, lab) in enumerate(zip(rows, label_rows)):
        inputs[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
        labels[i, : lab.shape[0]] = lab
    return inputs, mask.to(device), labels.to(device)


def target_logits(model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits `[N, V]` at the N labelled positions only, in row-major order."""
    hidden = model.base_model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
    return model.get_output_embeddings()(hidden[labels != IGNORE_INDEX])


def projector_loss(
    examples: Sequence[Example],
    projector: nn.Module,
    model: nn.Module,
    tokenizer,
    distill_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on the target tokens (+ distill_weight × KL to the text-reading teacher)."""
    inputs, mask, labels = build_inputs(examples, projector, model, tokenizer, "embed")
    logits = target_logits(model, inputs, mask, labels)
    targets = labels[labels != IGNORE_INDEX]
    ce = F.cross_entropy(logits.float(), targets)
    stats = {"ce": ce.item()}
    loss = ce
    if distill_weight > 0:
        with torch.no_grad():
            t_inputs, t_mask, t_labels = build_inputs(examples, None, model, tokenizer, "transcript")
            teacher = target_logits(model, t_inputs, t_mask, t_labels)
        assert teacher.shape == logits.shape, f"teacher {tuple(teacher.shape)} vs student {tuple(logits.shape)}"
        kl = F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(teacher.float(), -1), log_target=True, reduction="batchmean")
        loss = loss + distill_weight * kl
        stats["kl"] = kl.item()
    stats["loss"] = loss.item()
    return loss, stats


@torch.no_grad()
def match_output_norm(projector: nn.Module, model: nn.Module, sample: Sequence[Example]) -> float:
    """Scale the projector's last linear layer so its outputs have the token embeddings' RMS.

    A fresh projector emits vectors at a scale unrelated to the embedding table's; SmolLM2's
    embeddings are small (RMS ≈ 0.1 per dimension), so starting at their scale avoids the first
    hundreds of steps being spent shrinking the outputs. Returns the factor applied."""
    table = model.get_input_embeddings().weight.float()
    target_rms = table.pow(2).mean().sqrt()
    lengths = [ex.features.shape[0] for ex in sample]
    frames = torch.zeros(len(sample), max(lengths), sample[0].features.shape[-1], device=table.device)
    for i, ex in enumerate(sample):
        frames[i, : lengths[i]] = ex.features.to(device=table.device, dtype=torch.float32)
    out_rms = projector(frames).pow(2).mean().sqrt()
    factor = float(target_rms / out_rms)
    projector.linear_2.weight.mul_(factor)
    return factor


def lr_at(step: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up then cosine decay to a tenth of the peak, over the step budget or the time
    budget (`time_fraction` of `max_minutes` spent), whichever runs out first: on a shared CPU the
    step rate is unknown in advance, and a run cut by the clock should still end annealed."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = max((step - config.warmup_steps) / max(1, config.steps - config.warmup_steps), time_fraction)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# --- the loop -----------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    projector: nn.Module
    step: int
    history: list[dict[str, Any]]
    seconds: float


def train(
    config: TrainConfig,
    model: nn.Module,
    tokenizer,
    train_examples: Sequence[Example],
    eval_sets: dict[str, Sequence[Example]] | None = None,
    in_dim: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    refresh: Callable[[], Sequence[Example]] | None = None,
) -> TrainResult:
    """Train (or resume, from `out_dir/train_state.pt`) a `config.projector_kind` projector.

    `refresh()`, when given, is called at each epoch boundary and may return a larger training set
    (the corpus builder writes shards while training runs)."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    out = Path(config.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model.requires_grad_(False).eval()
    hidden = model.get_input_embeddings().embedding_dim
    device = model.get_input_embeddings().weight.device  # the projector trains where the LLM runs
    projector = build_projector(config.projector_kind, in_dim or train_examples[0].features.shape[-1], hidden).to(device)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    state_path = out / STATE_FILE
    step, history, elapsed = 0, [], 0.0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location=device)
        if not _same_run(state["config"], config):
            raise ValueError(f"{state_path} belongs to a run with another config; use a fresh --out")
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, elapsed = state["step"], state["history"], state["seconds"]
        rng.setstate(state["rng"])
        log(f"resumed at step {step}")
    elif config.match_embedding_norm:
        factor = match_output_norm(projector, model, train_examples[: config.batch_size * 4])
        log(f"output scale matched to the embedding RMS (x{factor:.3g})")

    def save_state() -> None:
        torch.save(
            {
                "config": _resume_key(config),
                "projector": projector.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "history": history,
                "seconds": elapsed,
                "rng": rng.getstate(),
            },
            state_path.with_suffix(".tmp"),
        )
        state_path.with_suffix(".tmp").replace(state_path)  # never a half-written state

    order: list[int] = []
    start = time.perf_counter() - elapsed
    deadline = start + config.max_minutes * 60 if config.max_minutes else None
    distill_weight = config.distill_weight if config.distill else 0.0
    bar = tqdm(total=config.steps, initial=step, desc="projector", unit="step", disable=not progress)
    ema = None
    projector.train()
    while step < config.steps:
        if len(order) < config.batch_size:
            if refresh is not None:
                newer = refresh()
                if len(newer) > len(train_examples):
                    log(f"step {step}: training set grew from {len(train_examples)} to {len(newer)} clips")
                    train_examples = newer
            fresh = list(range(len(train_examples)))
            rng.shuffle(fresh)
            order += fresh
        batch = [train_examples[i] for i in order[: config.batch_size]]
        del order[: config.batch_size]
        spent = (time.perf_counter() - start) / (config.max_minutes * 60) if config.max_minutes else 0.0
        lr = lr_at(step, config, spent)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, stats = projector_loss(batch, projector, model, tokenizer, distill_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projector.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        elapsed = time.perf_counter() - start
        ema = stats["loss"] if ema is None else 0.95 * ema + 0.05 * stats["loss"]
        record = {"step": step, "seconds": round(elapsed, 1), "lr": lr, **stats}
        bar.set_postfix(loss=f"{ema:.3f}")
        bar.update(1)
        if eval_sets and (step % config.eval_every == 0 or step == config.steps):
            projector.eval()
            record["eval"] = {name: eval_loss(projector, model, tokenizer, ex[: config.eval_clips], config.batch_size) for name, ex in eval_sets.items()}
            projector.train()
            log(f"step {step}: train loss (ema) {ema:.3f}, held-out CE {record['eval']}")
        history.append(record)
        with (out / LOG_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
            save_state()
        if out_of_time:
            log(f"stopping at step {step}: --max-minutes reached (state saved; rerun to resume)")
            break
    bar.close()
    projector.eval()
    return TrainResult(projector=projector, step=step, history=history, seconds=elapsed)


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


def _resume_key(config: TrainConfig) -> dict[str, Any]:
    """The config fields a resumed run must share (time limits and eval cadence may change)."""
    return config.model_dump(exclude={"max_minutes", "eval_every", "checkpoint_every", "threads", "steps", "data_dir", "device"})


def _same_run(saved: dict[str, Any], config: TrainConfig) -> bool:
    """Whether a saved state's config key matches `config`; a field added since the state was saved
    counts as its default (audio states written before `modality` existed still resume)."""
    current = _resume_key(config)
    defaults = {name: field.default for name, field in TrainConfig.model_fields.items()}
    return set(saved) <= set(current) and all(saved.get(k, defaults.get(k)) == v for k, v in current.items())


# --- corpus → examples, CLI glue ---------------------------------------------------------------------


def corpus_examples(data_dir: str, splits: Sequence[str], seed: int, canonical_only: bool = False) -> dict[str, list[Example]]:
    """Examples per split from a speech corpus; training instructions vary (canonical one half the time)."""
    from fusion.speech_data import (
        CANONICAL_INSTRUCTION_SHARE,
        REPEAT_INSTRUCTION,
        REPEAT_PARAPHRASES,
        load_features,
        load_manifest,
    )

    clips = [c for c in load_manifest(data_dir) if c.split in splits]
    features = load_features(data_dir, clips)
    return _turns(
        [(c.split, features[c.id], c.text, c.transcript) for c in clips],
        splits, seed, canonical_only, REPEAT_INSTRUCTION, REPEAT_PARAPHRASES, CANONICAL_INSTRUCTION_SHARE,
        AUDIO_FIRST_SHARE, "audio",
    )


def vision_examples(data_dir: str, splits: Sequence[str], seed: int, canonical_only: bool = False) -> dict[str, list[Example]]:
    """Examples per split from an image set; training instructions vary (canonical one half the
    time) and a fifth of training turns put the image first. Eval turns: canonical, text first."""
    from fusion.vision_data import (
        CANONICAL_INSTRUCTION_SHARE,
        CAPTION_INSTRUCTION,
        CAPTION_PARAPHRASES,
        IMAGE_FIRST_SHARE,
        load_features,
        load_manifest,
    )

    records = [r for r in load_manifest(data_dir) if r.split in splits]
    features = load_features(data_dir, records)
    return _turns(
        [(r.split, features[r.id], r.caption, None) for r in records],
        splits, seed, canonical_only, CAPTION_INSTRUCTION, CAPTION_PARAPHRASES, CANONICAL_INSTRUCTION_SHARE,
        IMAGE_FIRST_SHARE, "image",
    )


def _turns(
    items: Sequence[tuple[str, torch.Tensor, str, str | None]],
    splits: Sequence[str],
    seed: int,
    canonical_only: bool,
    instruction: str,
    paraphrases: Sequence[str],
    canonical_share: float,
    media_first_share: float,
    kind: MediaKind,
) -> dict[str, list[Example]]:
    """(split, features, target, transcript) items → Examples per split. Training turns vary: the
    canonical instruction `canonical_share` of the time, else a paraphrase, and the media part first
    `media_first_share` of the time; eval turns (and `canonical_only`) are canonical, text first."""
    rng = random.Random(seed)
    out: dict[str, list[Example]] = {split: [] for split in splits}
    for split, features, target, transcript in items:
        varied = split == "train" and not canonical_only
        said = instruction
        if varied and rng.random() > canonical_share:
            said = rng.choice(paraphrases)
        out[split].append(
            Example(
                features=features,
                target=target,
                instruction=said,
                transcript=transcript,
                media_first=varied and rng.random() < media_first_share,
                kind=kind,
            )
        )
    return out


def train_projector_cli(config: TrainConfig, command: str, ship_to: str | None = None) -> Path:
    """`chorus train-projector`: train against the packaged SmolLM2 on a speech corpus (Whisper base
    features) or an image set (its CLIP's features), save `out_dir/projector` (float32) and, with
    `ship_to`, an fp16 copy there."""
    from fusion.checkpoint import ModelIdentity, llm_identity, save_projector, whisper_identity
    from modalities.llm.runtime import LLMConfig, LLMRuntime

    torch.set_num_threads(config.threads)
    runtime = LLMRuntime.from_config(LLMConfig(threads=config.threads, device=config.device))
    runtime.model.to(getattr(torch, config.llm_dtype))
    refresh = None
    if config.modality == "image":
        from fusion import vision_data

        if not vision_data.is_vision_data(config.data_dir):
            raise ValueError(f"{config.data_dir} is not an image set (run `chorus make-vision-data`)")
        held_out = vision_data.eval_splits(config.data_dir)
        data = vision_examples(config.data_dir, ("train", *held_out), config.seed)
        eval_sets = {s: data[s] for s in held_out if data[s]}
        recipe = vision_data.load_recipe(config.data_dir)
        encoder, unit = ModelIdentity(**recipe["encoder"]), "images"
    else:
        from fusion import speech_data

        data = corpus_examples(config.data_dir, ("train", *speech_data.EVAL_SPLITS), config.seed)
        eval_sets = {s: data[s] for s in ("eval_sentences", "eval_voices") if data[s]}
        recipe = speech_data.load_recipe(config.data_dir)
        encoder, unit = whisper_identity("packaged"), "clips"
        shards_seen = [len(list(Path(config.data_dir).expanduser().glob("shard-*.jsonl")))]

        def refresh() -> list[Example]:
            shards = len(list(Path(config.data_dir).expanduser().glob("shard-*.jsonl")))
            if shards == shards_seen[0]:
                return data["train"]
            shards_seen[0] = shards
            data["train"] = corpus_examples(config.data_dir, ("train",), config.seed)["train"]
            return data["train"]

    print({split: len(ex) for split, ex in data.items()})
    result = train(config, runtime.model, runtime.tokenizer, data["train"], eval_sets, refresh=refresh)
    last = result.history[-1] if result.history else {}
    evals = [h["eval"] for h in result.history if "eval" in h]
    recent = [h["loss"] for h in result.history[-50:]]
    first = [h["loss"] for h in result.history[:20]]
    metadata = {
        "modality": config.modality,
        "training": {
            "command": command,
            "config": config.model_dump(),
            "steps": result.step,
            "seconds": round(result.seconds),
            "train_loss_first20": round(sum(first) / max(1, len(first)), 4),
            "train_loss_last50": round(sum(recent) / max(1, len(recent)), 4),
            "heldout_ce": evals[-1] if evals else None,
            f"train_{unit}": len(data["train"]),
        },
        "data": recipe,
    }
    llm, kind = llm_identity("packaged"), config.projector_kind
    out = save_projector(Path(config.out_dir).expanduser() / "projector", result.projector, kind=kind, encoder=encoder, llm=llm, dtype="float32", **metadata)
    print(f"step {result.step}, {result.seconds / 60:.1f} min, last loss {last.get('loss')}: {out}")
    if ship_to:
        shipped = save_projector(ship_to, result.projector, kind=kind, encoder=encoder, llm=llm, dtype="float16", **metadata)
        print(f"fp16 copy: {shipped}")
    return out
