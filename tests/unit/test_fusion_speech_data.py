"""The speech corpus builder and what training reads from it, with a stand-in synthesizer and
Whisper (no synthesizer installed, no weights): shards, resume, refusal of another config, teacher
answers cached and carried into answer turns, and a training set that grows while the corpus is
still being built. (`test_fusion_corpus_v2` builds one with the real synthesizers.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion import speech_data, synthesizers, teacher, train_data
from fusion.checkpoint import ModelIdentity
from fusion.corpus import FREEFORM_SENTENCES
from fusion.shards import MANIFEST, RECIPE, complete_shards
from fusion.speech_data import (
    ANSWERS,
    EVAL_SPLITS,
    INSTRUCTIONS,
    SPLITS,
    SpeechDataConfig,
    build_speech_data,
    load_answers,
    load_features,
    load_manifest,
)
from fusion.synthesizers import HELDOUT_SYNTH

D_AUDIO = 8
EVAL_CLIPS = 4


class CountingWhisper:
    """Features whose length follows the clip's; counts the clips it encodes."""

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, audio: np.ndarray) -> torch.Tensor:
        assert audio.dtype == np.float32 and audio.ndim == 1
        self.encoded += 1
        return torch.full((2 + audio.size % 5, D_AUDIO), float(audio[0]))


def fake_speak(voice, text: str, speed: float = 1.0, pitch: int = 50) -> np.ndarray:
    """A tone whose length follows the text and the speed: deterministic, no synthesizer needed."""
    n = int(len(text) * 160 / speed)
    return (0.5 * np.sin(np.arange(n) * (0.05 + 0.001 * pitch))).astype(np.float32)


@pytest.fixture(autouse=True)
def _no_synthesizers(monkeypatch):
    monkeypatch.setattr(speech_data, "speak", fake_speak)
    monkeypatch.setattr(synthesizers, "missing", lambda: [])


def _config(out: Path, **overrides) -> SpeechDataConfig:
    sizes = {
        "template_sentences": 30,
        "llm_sentences": 0,
        "prose_sentences": 0,
        "eval_clips": EVAL_CLIPS,
        "shard_size": 16,
    }
    return SpeechDataConfig(out_dir=str(out), **(sizes | overrides))


def _build(config: SpeechDataConfig, llm_factory=None) -> CountingWhisper:
    whisper = CountingWhisper()
    build_speech_data(config, whisper, llm_factory, log=lambda _: None)
    return whisper


def test_corpus_shards_recipe_and_features(tmp_path):
    config = _config(tmp_path / "corpus")
    whisper = _build(config)
    clips = load_manifest(config.out_dir)
    recipe = json.loads((tmp_path / "corpus" / RECIPE).read_text())
    assert whisper.encoded == len(clips) == sum(recipe["counts"].values())
    assert recipe["config"] == config.model_dump() and recipe["instructions"] == INSTRUCTIONS.all()
    assert recipe["counts"] == {
        "train": config.template_sentences - EVAL_CLIPS,  # eval_synth is drawn out of the training pool
        "eval_templates": EVAL_CLIPS,
        "eval_synth": EVAL_CLIPS,
        "eval_freeform": len(FREEFORM_SENTENCES),
    }
    assert recipe["heldout_synthesizer"] == HELDOUT_SYNTH
    assert complete_shards(config.out_dir) == -(-len(clips) // config.shard_size)
    # Eval clips first (in the first shard, ready before the training clips are).
    assert [c.split for c in clips[: 2 * EVAL_CLIPS]] == ["eval_templates"] * EVAL_CLIPS + ["eval_synth"] * EVAL_CLIPS
    assert {c.split for c in clips} == set(SPLITS)
    assert {c.synth for c in clips if c.split in ("eval_synth", "eval_freeform")} == {HELDOUT_SYNTH}
    assert all(c.augment == "clean" for c in clips if c.split != "train")
    assert not (tmp_path / "corpus" / ANSWERS).exists()  # no LLM: no teacher answers
    features = load_features(config.out_dir, clips)
    assert all(features[c.id].shape == (c.frames, D_AUDIO) and features[c.id].dtype == torch.float16 for c in clips)


def test_a_finished_corpus_is_kept_and_another_config_refused(tmp_path):
    config = _config(tmp_path / "corpus")
    _build(config)
    assert _build(config).encoded == 0  # every shard complete: nothing encoded again
    with pytest.raises(ValueError, match="another config"):
        _build(_config(tmp_path / "corpus", seed=1))


def test_missing_synthesizers_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(synthesizers, "missing", lambda: ["festival"])
    with pytest.raises(RuntimeError, match="festival"):
        _build(_config(tmp_path / "corpus"))


def test_teacher_answers_are_cached_and_become_answer_turns(tmp_path, monkeypatch):
    asked: list[str] = []

    def fake_teacher(model, tokenizer, texts, max_new_tokens):
        assert (model, tokenizer, max_new_tokens) == ("model", "tokenizer", 32)
        assert complete_shards(config.out_dir) == n_shards  # answered last: the features come first
        asked.extend(texts)
        for i in range(0, len(texts), 5):  # a generator of dicts, one per batch, as fusion.teacher's
            yield {t: f"Answer to {t}" for t in texts[i : i + 5]}

    monkeypatch.setattr(teacher, "teacher_answers", fake_teacher)
    config = _config(tmp_path / "corpus", answer_sentences=10)
    n_shards = -(-(config.template_sentences + EVAL_CLIPS + len(FREEFORM_SENTENCES)) // config.shard_size)
    _build(config, llm_factory=lambda: ("model", "tokenizer"))
    clips = load_manifest(config.out_dir)
    train = [c for c in clips if c.split == "train"]
    answered = [c.text for c in train[: config.answer_sentences]]  # the first training sentences, each once
    assert asked == answered
    assert load_answers(config.out_dir) == {t: f"Answer to {t}" for t in answered}

    # A rebuild reads the cache: the teacher is not asked again.
    asked.clear()
    _build(config, llm_factory=lambda: pytest.fail("the LLM is not needed when every answer is cached"))
    assert asked == []

    # answer_share=1: every training clip with an answer is an answer turn (the clip is the whole user
    # turn, its sentence kept as what was said); the rest and the eval turns stay "repeat".
    data = train_data.corpus_examples(config.out_dir, ("train", "eval_synth"), seed=0, answer_share=1.0)
    turns = [(ex.spoken, ex.target, ex.instruction, ex.media_first) for ex in data["train"]]
    assert turns[: len(answered)] == [(t, f"Answer to {t}", "", False) for t in answered]
    assert all(
        ex.spoken is None and ex.target == c.text
        for ex, c in zip(data["train"][len(answered) :], train[len(answered) :])
    )
    assert all(ex.spoken is None and ex.instruction == INSTRUCTIONS.canonical for ex in data["eval_synth"])
    # answer_share=0: the same clips, all "repeat what was said".
    plain = train_data.corpus_examples(config.out_dir, ("train",), seed=0)
    assert [ex.target for ex in plain["train"]] == [c.text for c in train]
    assert all(ex.spoken is None and ex.instruction in INSTRUCTIONS.all() for ex in plain["train"])


def test_training_set_grows_with_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(train_data, "whisper_identity", lambda model: ModelIdentity("whisper-test"))
    config = _config(tmp_path / "corpus")
    _build(config)
    out = Path(config.out_dir)
    total = sum(c.split == "train" for c in load_manifest(out))
    # As if the build were still running: the last shard and the manifest not written yet.
    last = sorted(out.glob("shard-*.jsonl"))[-1]
    missing = sum(json.loads(line)["split"] == "train" for line in last.read_text().splitlines())
    assert missing > 0
    last.unlink()
    (out / MANIFEST).unlink()

    sets = train_data.training_sets("audio", config.out_dir, seed=0)
    assert set(sets.splits) == {"train", *EVAL_SPLITS} and set(sets.eval_sets) == set(train_data.AUDIO_EVAL_SETS)
    assert (sets.unit, sets.encoder.name) == ("clips", "whisper-test")
    assert len(sets.splits["train"]) == total - missing and sets.refresh is not None
    assert len(sets.refresh()) == total - missing  # no new shard yet
    assert _build(config).encoded == missing  # the build resumes at the missing shard
    assert len(sets.refresh()) == total and len(sets.splits["train"]) == total
    assert all(ex.kind == "audio" for ex in sets.splits["train"])
    for name in train_data.AUDIO_EVAL_SETS:
        assert {ex.instruction for ex in sets.eval_sets[name]} == {INSTRUCTIONS.canonical}
