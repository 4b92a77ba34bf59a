"""Feature sets → training turns (`fusion.batches.Example`) per split, and what a training run
needs from a set: its training and held-out turns, its recipe and its encoder."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fusion.batches import Example
from fusion.checkpoint import ModelIdentity, whisper_identity
from fusion.prompt import MediaKind
from fusion.shards import Instructions, complete_shards

AUDIO_EVAL_SETS = ("eval_templates", "eval_synth")  # the speech splits the periodic held-out loss uses


def corpus_examples(
    data_dir: str, splits: Sequence[str], seed: int, canonical_only: bool = False, answer_share: float = 0.0
) -> dict[str, list[Example]]:
    """Examples per split from a speech corpus; training instructions vary (canonical one half the time).

    `answer_share` of the training clips that have a teacher answer become "answer" turns instead:
    no instruction (the clip is the whole user turn), target = the LLM's own answer to the sentence."""
    from fusion.speech_data import INSTRUCTIONS, load_answers, load_features, load_manifest

    clips = [c for c in load_manifest(data_dir) if c.split in splits]
    features = load_features(data_dir, clips)
    items = [(c.split, features[c.id], c.text, c.transcript) for c in clips]
    out = _turns(items, splits, seed, canonical_only, INSTRUCTIONS, "audio")
    if answer_share and "train" in out:
        rng = random.Random(seed + 1)
        answers = load_answers(data_dir)
        for clip, example in zip([c for c in clips if c.split == "train"], out["train"]):
            if answers.get(clip.text) and rng.random() < answer_share:
                example.spoken, example.target, example.instruction, example.media_first = clip.text, answers[clip.text], "", False
    return out


def vision_examples(data_dir: str, splits: Sequence[str], seed: int, canonical_only: bool = False) -> dict[str, list[Example]]:
    """Examples per split from an image set; training instructions vary (canonical one half the
    time) and a fifth of training turns put the image first. Eval turns: canonical, text first."""
    from fusion.vision_data import INSTRUCTIONS, load_features, load_manifest

    records = [r for r in load_manifest(data_dir) if r.split in splits]
    features = load_features(data_dir, records)
    items = [(r.split, features[r.id], r.caption, None) for r in records]
    return _turns(items, splits, seed, canonical_only, INSTRUCTIONS, "image")


def _turns(
    items: Sequence[tuple[str, torch.Tensor, str, str | None]],
    splits: Sequence[str],
    seed: int,
    canonical_only: bool,
    instructions: Instructions,
    kind: MediaKind,
) -> dict[str, list[Example]]:
    """(split, features, target, transcript) items → Examples per split. Training turns vary (the
    canonical instruction or a paraphrase, the media part first or not, as `instructions` says);
    eval turns (and `canonical_only`) are canonical, text first."""
    rng = random.Random(seed)
    out: dict[str, list[Example]] = {split: [] for split in splits}
    for split, features, target, transcript in items:
        varied = split == "train" and not canonical_only
        said = instructions.canonical
        if varied and rng.random() > instructions.canonical_share:
            said = rng.choice(instructions.paraphrases)
        out[split].append(
            Example(
                features=features,
                target=target,
                instruction=said,
                transcript=transcript,
                media_first=varied and rng.random() < instructions.media_first_share,
                kind=kind,
            )
        )
    return out


@dataclass
class TrainingSets:
    """What a run reads from a feature set. `refresh()`, where the set may still grow (a speech
    corpus being built), returns the training turns again, larger once a new shard is complete."""

    splits: dict[str, list[Example]]  # "train" and every held-out split
    eval_sets: dict[str, list[Example]]  # the non-empty held-out splits the periodic eval uses
    recipe: dict
    encoder: ModelIdentity
    unit: str  # what one record is, for the checkpoint's record: "clips" or "images"
    refresh: Callable[[], list[Example]] | None = None


def training_sets(modality: str, data_dir: str, seed: int, answer_share: float = 0.0) -> TrainingSets:
    """The training and held-out turns of the set at `data_dir` for a `modality` projector."""
    if modality == "image":
        return _image_sets(data_dir, seed)
    return _audio_sets(data_dir, seed, answer_share)


def _image_sets(data_dir: str, seed: int) -> TrainingSets:
    from fusion import vision_data

    if not vision_data.is_vision_data(data_dir):
        raise ValueError(f"{data_dir} is not an image set (run `chorus make-vision-data`)")
    held_out = vision_data.eval_splits(data_dir)
    data = vision_examples(data_dir, ("train", *held_out), seed)
    recipe = vision_data.load_recipe(data_dir)
    eval_sets = {s: data[s] for s in held_out if data[s]}
    return TrainingSets(data, eval_sets, recipe, ModelIdentity(**recipe["encoder"]), "images")


def _audio_sets(data_dir: str, seed: int, answer_share: float) -> TrainingSets:
    from fusion import speech_data

    data = corpus_examples(data_dir, ("train", *speech_data.EVAL_SPLITS), seed, answer_share=answer_share)
    eval_sets = {s: data[s] for s in AUDIO_EVAL_SETS if data[s]}
    shards_seen = complete_shards(data_dir)

    def refresh() -> list[Example]:
        nonlocal shards_seen
        shards = complete_shards(data_dir)
        if shards != shards_seen:
            shards_seen = shards
            data["train"] = corpus_examples(data_dir, ("train",), seed, answer_share=answer_share)["train"]
        return data["train"]

    recipe = speech_data.load_recipe(data_dir)
    return TrainingSets(data, eval_sets, recipe, whisper_identity("packaged"), "clips", refresh)
