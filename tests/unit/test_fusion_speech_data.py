"""The speech corpus builder and what training reads from it, with a stand-in synthesizer and
Whisper (no espeak-ng, no weights): shards, resume, refusal of another config, and a training
set that grows while the corpus is still being built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fusion import train_data
from fusion.checkpoint import ModelIdentity
from fusion.shards import MANIFEST, RECIPE, complete_shards
from fusion.speech_data import (
    EVAL_SPLITS,
    INSTRUCTIONS,
    SpeechDataConfig,
    build_speech_data,
    load_features,
    load_manifest,
)

D_AUDIO = 8


class CountingWhisper:
    """Features whose length follows the clip's; counts the clips it encodes."""

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        self.encoded += 1
        return torch.full((2 + audio.numel() % 5, D_AUDIO), float(audio[0]))


def synthesize(text: str, voice: str, speed_wpm: int, pitch: int) -> torch.Tensor:
    return torch.full((len(text),), speed_wpm / 1000)


def _config(out: Path, **overrides) -> SpeechDataConfig:
    sizes = {"template_sentences": 30, "llm_sentences": 0, "prose_sentences": 0, "heldout_sentences": 4, "shard_size": 16}
    return SpeechDataConfig(out_dir=str(out), **(sizes | overrides))


def _build(config: SpeechDataConfig) -> CountingWhisper:
    whisper = CountingWhisper()
    build_speech_data(config, whisper, None, synthesize, log=lambda _: None)
    return whisper


def test_corpus_shards_recipe_and_features(tmp_path):
    config = _config(tmp_path / "corpus")
    whisper = _build(config)
    clips = load_manifest(config.out_dir)
    recipe = json.loads((tmp_path / "corpus" / RECIPE).read_text())
    assert whisper.encoded == len(clips) == sum(recipe["counts"].values())
    assert recipe["config"] == config.model_dump() and recipe["instructions"] == INSTRUCTIONS.all()
    assert complete_shards(config.out_dir) == -(-len(clips) // config.shard_size)
    assert [c.split for c in clips[:4]] == ["eval_sentences"] * 4  # eval clips first: in the first shard
    features = load_features(config.out_dir, clips)
    assert all(features[c.id].shape == (c.frames, D_AUDIO) and features[c.id].dtype == torch.float16 for c in clips)


def test_a_finished_corpus_is_kept_and_another_config_refused(tmp_path):
    config = _config(tmp_path / "corpus")
    _build(config)
    assert _build(config).encoded == 0  # every shard complete: nothing encoded again
    with pytest.raises(ValueError, match="another config"):
        _build(_config(tmp_path / "corpus", seed=1))


def test_training_set_grows_with_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(train_data, "whisper_identity", lambda model: ModelIdentity("whisper-test"))
    config = _config(tmp_path / "corpus")
    _build(config)
    out = Path(config.out_dir)
    total = sum(c.split == "train" for c in load_manifest(out))
    # As if the build were still running: the last shard and the manifest not written yet.
    last = sorted(out.glob("shard-*.jsonl"))[-1]
    missing = sum(json.loads(line)["split"] == "train" for line in last.read_text().splitlines())
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
    assert {ex.instruction for ex in sets.eval_sets["eval_voices"]} == {INSTRUCTIONS.canonical}
