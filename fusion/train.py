"""Projector training on cached encoder features: the encoder and the LLM frozen, the projector trained.

One loop serves both modalities (`TrainConfig.modality`):

- `audio`: a `stack{k}_swiglu` projector on Whisper frames, target = the spoken sentence
  (`fusion.speech_data`);
- `image`: an `mlp2x_gelu` projector (LLaVA-1.5) on CLIP patch features, target = the image's caption
  (`fusion.vision_data`).

How a turn becomes a batch and what the loss is: `fusion.batches`; how a feature set becomes turns:
`fusion.train_data`. Both modules' public names are importable from here too.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from fusion.batches import (  # noqa: F401  (re-exported: fusion.train is where callers look)
    END_OF_TURN,
    IGNORE_INDEX,
    MEDIA_INDEX,
    Example,
    build_inputs,
    eval_loss,
    match_output_norm,
    projector_loss,
    target_logits,
)
from fusion.feature_augment import FeatureAugment, with_views
from fusion.projectors import build_projector
from fusion.train_data import TrainingSets, corpus_examples, vision_examples  # noqa: F401  (re-exported)

IMAGE_PROJECTOR = "mlp2x_gelu"  # LLaVA-1.5's; serve builds the same kind for images
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
EMA_DECAY = 0.95  # smoothing of the training loss the progress bar shows
NORM_MATCH_BATCHES = 4  # batches of training turns `match_output_norm` measures the outputs on


class TrainConfig(BaseModel):
    """One projector training run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str = Field(description="Speech corpus (`chorus make-speech-data`) or image set (`chorus make-vision-data`)")
    out_dir: str = Field(description="Run directory: train state (resume), log, projector checkpoints")
    modality: Literal["audio", "image"] = Field(
        "audio", description="audio: stack{k}_swiglu on Whisper frames; image: mlp2x_gelu on CLIP patches"
    )
    stack: int = Field(4, ge=1, description="Whisper frames per soft token (audio only)")
    connector: Literal["stack", "whisper_decoder"] = Field(
        "stack", description="audio: stack = `stack{k}_swiglu` (Ultravox); whisper_decoder = `whisperdec{k}`, Whisper's "
        "decoder reading the frames through learned queries (DiVA; fusion.connector), started from the corpus's Whisper"
    )
    connector_window: int = Field(
        0, ge=0, description="whisper_decoder: frames each side of a query's own that it reads (0: the whole clip)"
    )
    augment_features: FeatureAugment | None = Field(
        None, description="SpecAugment on the cached encoder frames of training turns, a fresh view every step "
        "(fusion.feature_augment); alignment and distillation stages"
    )
    steps: int = Field(1000, ge=1, description="Optimizer steps in total (a resumed run continues the count)")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay)")
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    distill: bool = Field(False, description="Add KL to the LLM reading the text (teacher) on target tokens")
    distill_weight: float = Field(1.0, ge=0)
    kl_temperature: float = Field(1.0, gt=0, description="Softmax temperature of the distillation KL (Ultravox: 2)")
    hidden_weight: float = Field(
        0.0, ge=0, description="DiVA: weight of the final-prompt-position hidden-state match to the teacher (needs distill)"
    )
    ce_weight: float = Field(1.0, ge=0, description="Weight of cross-entropy on the target tokens")
    split_turns: bool = Field(
        False, description="Teacher terms (KL, hidden) on answer turns only, CE on repeat turns only (fusion.batches)"
    )
    init_from: str | None = Field(
        None, description="Start from this projector checkpoint's weights (no alignment, no norm matching)"
    )
    align_steps: int = Field(
        0, ge=0, description="Steps of CTC alignment to the sentences' token embeddings before the LLM stage (fusion.align)"
    )
    align_lr: float = Field(2e-3, gt=0, description="Peak learning rate of the alignment stage")
    answer_share: float = Field(
        0.0, ge=0, le=1, description="Share of training clips whose target is the LLM's own answer to the sentence "
        "(the rest: repeat what was said); needs a corpus built with answers"
    )
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
    def _distill_needs_text(self) -> TrainConfig:
        if (self.distill or self.answer_share) and self.modality != "audio":
            raise ValueError("distill and answers need a text form of the media (a transcript); only audio has one")
        if self.connector != "stack" and self.modality != "audio":
            raise ValueError("the whisper_decoder connector reads Whisper frames: audio only")
        if self.hidden_weight and not self.distill:
            raise ValueError("hidden_weight matches the teacher's hidden state: it needs distill")
        return self

    @property
    def projector_kind(self) -> str:
        if self.modality == "image":
            return IMAGE_PROJECTOR
        return f"whisperdec{self.stack}" if self.connector == "whisper_decoder" else f"stack{self.stack}_swiglu"


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


@dataclass
class _RunState:
    """Everything a resumed run continues from (saved as `out_dir/train_state.pt`)."""

    projector: nn.Module
    optimizer: torch.optim.Optimizer
    rng: random.Random  # batch order
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    aligned: bool = False
    views: torch.Generator = field(default_factory=torch.Generator)  # feature augmentation's draws
    order: list[int] = field(default_factory=list)  # the epoch's clips not yet drawn

    def save(self, path: Path, config: TrainConfig) -> None:
        state = {
            "config": _resume_key(config),
            "projector": self.projector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "history": self.history,
            "seconds": self.seconds,
            "aligned": self.aligned,
            "rng": self.rng.getstate(),
            "views": self.views.get_state(),
            "order": self.order,
        }
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # never a half-written state


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
    whisper_model: nn.Module | None = None,
) -> TrainResult:
    """Train (or resume, from `out_dir/train_state.pt`) a `config.projector_kind` projector.

    `refresh()`, when given, is called at each epoch boundary and may return a larger training set
    (the corpus builder writes shards while training runs). `whisper_model` starts a fresh
    `whisper_decoder` connector (default: the packaged Whisper, whose features the corpus holds)."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    out = Path(config.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model.requires_grad_(False).eval()
    run = _start_or_resume(config, model, tokenizer, train_examples, in_dim, out / STATE_FILE, log, whisper_model)
    if config.align_steps and not run.aligned:
        from fusion.align import align

        t0 = time.perf_counter()
        aligned = align(
            run.projector, model.get_input_embeddings().weight, tokenizer, train_examples, config.align_steps,
            config.batch_size * 4, config.align_lr, config.seed, progress, log, config.augment_features, eval_sets,
        )
        run.aligned, run.seconds = True, run.seconds + time.perf_counter() - t0
        record = {"step": 0, "align": aligned[-1], "align_seconds": round(time.perf_counter() - t0, 1)}
        if eval_sets:
            record["eval"] = _held_out_losses(config, run.projector, model, tokenizer, eval_sets)
            log(f"after alignment: held-out CE {record['eval']}")
        run.history.append(record)
        run.save(out / STATE_FILE, config)
    order = run.order  # saved with the state: a resumed run finishes the epoch it was in
    start = time.perf_counter() - run.seconds
    deadline = start + config.max_minutes * 60 if config.max_minutes else None
    bar = tqdm(total=config.steps, initial=run.step, desc="projector", unit="step", disable=not progress)
    ema = None
    run.projector.train()
    while run.step < config.steps:
        if len(order) < config.batch_size:
            train_examples = _grown(train_examples, refresh, run.step, log)
            fresh = list(range(len(train_examples)))
            run.rng.shuffle(fresh)
            order += fresh
        batch = [train_examples[i] for i in order[: config.batch_size]]
        del order[: config.batch_size]
        if config.augment_features is not None:
            batch = with_views(batch, config.augment_features, run.views)
        spent = (time.perf_counter() - start) / (config.max_minutes * 60) if config.max_minutes else 0.0
        lr = lr_at(run.step, config, spent)
        stats = _optimizer_step(config, run, batch, model, tokenizer, lr)
        run.seconds = time.perf_counter() - start
        ema = stats["loss"] if ema is None else EMA_DECAY * ema + (1 - EMA_DECAY) * stats["loss"]
        record = {"step": run.step, "seconds": round(run.seconds, 1), "lr": lr, **stats}
        bar.set_postfix(loss=f"{ema:.3f}")
        bar.update(1)
        if eval_sets and (run.step % config.eval_every == 0 or run.step == config.steps):
            record["eval"] = _held_out_losses(config, run.projector, model, tokenizer, eval_sets)
            log(f"step {run.step}: train loss (ema) {ema:.3f}, held-out CE {record['eval']}")
        run.history.append(record)
        with (out / LOG_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if run.step % config.checkpoint_every == 0 or run.step == config.steps or out_of_time:
            run.save(out / STATE_FILE, config)
        if out_of_time:
            log(f"stopping at step {run.step}: --max-minutes reached (state saved; rerun to resume)")
            break
    bar.close()
    run.projector.eval()
    return TrainResult(projector=run.projector, step=run.step, history=run.history, seconds=run.seconds)


def _start_or_resume(
    config: TrainConfig,
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    in_dim: int | None,
    state_path: Path,
    log: Callable[[str], None],
    whisper_model: nn.Module | None = None,
) -> _RunState:
    """A fresh projector and optimizer on the LLM's device, or those of the saved run."""
    hidden = model.get_input_embeddings().embedding_dim
    device = model.get_input_embeddings().weight.device  # the projector trains where the LLM runs
    shape: dict[str, int] = {}
    if config.modality == "audio" and config.connector == "whisper_decoder":
        whisper_model = whisper_model or _packaged_whisper()
        dims = whisper_model.dims
        shape = {"n_layer": dims.n_text_layer, "n_head": dims.n_text_head, "window": config.connector_window}
    projector = build_projector(config.projector_kind, in_dim or examples[0].features.shape[-1], hidden, **shape).to(device)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run = _RunState(projector, optimizer, random.Random(config.seed), views=torch.Generator().manual_seed(config.seed + 2))
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location=device)
        if not _same_run(state["config"], config):
            raise ValueError(f"{state_path} belongs to a run with another config; use a fresh --out")
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        run.step, run.history, run.seconds = state["step"], state["history"], state["seconds"]
        run.aligned = state.get("aligned", False)
        run.rng.setstate(state["rng"])
        if "views" in state:
            run.views.set_state(state["views"])
        run.order = list(state.get("order", []))
        log(f"resumed at step {run.step}")
    elif config.init_from:
        from fusion.checkpoint import load_projector

        start, _meta = load_projector(config.init_from, llm_hidden_size=hidden)
        projector.load_state_dict({k: v.float() for k, v in start.state_dict().items()})
        run.aligned = True  # the weights it starts from were trained already
        log(f"starting from the projector at {config.init_from}")
    else:
        if whisper_model is not None:
            from fusion.connector import start_connector

            shared = start_connector(projector, whisper_model, model.get_input_embeddings().weight, tokenizer)
            log(f"connector: Whisper's decoder, output map fitted on {shared} tokens both vocabularies spell alike")
        if config.match_embedding_norm:
            factor = match_output_norm(projector, model, examples[: config.batch_size * NORM_MATCH_BATCHES])
            log(f"output scale matched to the embedding RMS (x{factor:.3g})")
    return run


def _packaged_whisper() -> nn.Module:
    """The Whisper the speech corpus's features come from (`fusion.train_data`: the packaged one)."""
    from modalities.audio.whisper import load_whisper_model

    return load_whisper_model("packaged")


def _grown(
    examples: Sequence[Example], refresh: Callable[[], Sequence[Example]] | None, step: int, log: Callable[[str], None]
) -> Sequence[Example]:
    """The training set, or the larger one `refresh()` returns (shards written since)."""
    if refresh is None:
        return examples
    newer = refresh()
    if len(newer) <= len(examples):
        return examples
    log(f"step {step}: training set grew from {len(examples)} to {len(newer)} clips")
    return newer


def _optimizer_step(
    config: TrainConfig, run: _RunState, batch: Sequence[Example], model: nn.Module, tokenizer, lr: float
) -> dict[str, float]:
    """One AdamW step on `batch` at learning rate `lr`; the loss figures."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    distill_weight = config.distill_weight if config.distill else 0.0
    hidden_weight = config.hidden_weight if config.distill else 0.0
    loss, stats = projector_loss(
        batch, run.projector, model, tokenizer, distill_weight, config.ce_weight, hidden_weight, config.kl_temperature,
        config.split_turns,
    )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.projector.parameters(), config.grad_clip)
    run.optimizer.step()
    run.step += 1
    return stats


def _held_out_losses(
    config: TrainConfig, projector: nn.Module, model: nn.Module, tokenizer, eval_sets: dict[str, Sequence[Example]]
) -> dict[str, float]:
    projector.eval()
    try:
        return {
            name: eval_loss(projector, model, tokenizer, examples[: config.eval_clips], config.batch_size)
            for name, examples in eval_sets.items()
        }
    finally:
        projector.train()


def _resume_key(config: TrainConfig) -> dict[str, Any]:
    """The config fields a resumed run must share (time limits and eval cadence may change)."""
    return config.model_dump(exclude={"max_minutes", "eval_every", "checkpoint_every", "threads", "steps", "data_dir", "device"})


def _same_run(saved: dict[str, Any], config: TrainConfig) -> bool:
    """Whether a saved state's config key matches `config`; a field added since the state was saved
    counts as its default (audio states written before `modality` existed still resume)."""
    current = _resume_key(config)
    defaults = {name: field.default for name, field in TrainConfig.model_fields.items()}
    return set(saved) <= set(current) and all(saved.get(k, defaults.get(k)) == v for k, v in current.items())


# --- `chorus train-projector` ------------------------------------------------------------------------


def train_projector_cli(config: TrainConfig, command: str, ship_to: str | None = None) -> Path:
    """`chorus train-projector`: train against the packaged SmolLM2 on a speech corpus (Whisper base
    features) or an image set (its CLIP's features), save `out_dir/projector` (float32) and, with
    `ship_to`, an fp16 copy there."""
    from fusion.checkpoint import llm_identity, save_projector
    from fusion.train_data import training_sets
    from modalities.llm import LLMConfig, LLMRuntime

    torch.set_num_threads(config.threads)
    runtime = LLMRuntime.from_config(LLMConfig(threads=config.threads, device=config.device))
    runtime.model.to(getattr(torch, config.llm_dtype))
    sets = training_sets(config.modality, config.data_dir, config.seed, config.answer_share)
    print({split: len(ex) for split, ex in sets.splits.items()})
    result = train(config, runtime.model, runtime.tokenizer, sets.splits["train"], sets.eval_sets, refresh=sets.refresh)
    metadata = _checkpoint_metadata(config, command, result, sets)
    saved = {"kind": config.projector_kind, "encoder": sets.encoder, "llm": llm_identity("packaged"), **metadata}
    out = save_projector(Path(config.out_dir).expanduser() / "projector", result.projector, dtype="float32", **saved)
    last = result.history[-1] if result.history else {}
    print(f"step {result.step}, {result.seconds / 60:.1f} min, last loss {last.get('loss')}: {out}")
    if ship_to:
        shipped = save_projector(ship_to, result.projector, dtype="float16", **saved)
        print(f"fp16 copy: {shipped}")
    return out


def _checkpoint_metadata(config: TrainConfig, command: str, result: TrainResult, sets: TrainingSets) -> dict[str, Any]:
    """What the checkpoint records about its training run and data."""
    evals = [h["eval"] for h in result.history if "eval" in h]
    steps = [h for h in result.history if "loss" in h]
    recent = [h["loss"] for h in steps[-50:]]
    first = [h["loss"] for h in steps[:20]]
    alignment = next((h for h in result.history if "align" in h), None)
    return {
        "modality": config.modality,
        "training": {
            "command": command,
            "config": config.model_dump(),
            "steps": result.step,
            "seconds": round(result.seconds),
            "train_loss_first20": round(sum(first) / max(1, len(first)), 4),
            "train_loss_last50": round(sum(recent) / max(1, len(recent)), 4),
            "heldout_ce": evals[-1] if evals else None,
            "alignment": alignment,
            f"train_{sets.unit}": len(sets.splits["train"]),
        },
        "data": sets.recipe,
    }
