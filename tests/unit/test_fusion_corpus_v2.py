"""Speech corpus v2: the synthesizers, the channel augmentations, the held-out templates and
synthesizer of the corpus plan, and a tiny build with the real synthesizers (a stand-in Whisper)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from fusion import augment, speech_data
from fusion.corpus import FREEFORM_SENTENCES, SLOTS, TEMPLATES, split_templates
from fusion.speech_data import (
    SPLITS,
    SpeechDataConfig,
    build_speech_data,
    load_features,
    load_manifest,
    plan_clips,
    plan_sentences,
    render,
)
from fusion.synthesizers import (
    FESTIVAL_VOICES,
    FLITE_VOICES,
    HELDOUT_SYNTH,
    PITCH_RANGE,
    SPEED_RANGE,
    SYNTHS,
    TRAIN_SYNTH_WEIGHTS,
    TRAIN_SYNTHS,
    Voice,
    missing,
    speak,
)

RATE = 16000
SENTENCE = "Where is my parcel?"
ABSENT = set(missing())


def _needs(synth: str):
    return pytest.mark.skipif(synth in ABSENT, reason=f"{synth} is not installed (make setup installs it)")


# --- synthesizers ------------------------------------------------------------------------------------


def test_the_heldout_synthesizer_shares_neither_engine_nor_speaker_with_training():
    assert HELDOUT_SYNTH in SYNTHS and HELDOUT_SYNTH not in TRAIN_SYNTHS
    assert set(TRAIN_SYNTHS) | {HELDOUT_SYNTH} == set(SYNTHS)
    assert set(TRAIN_SYNTH_WEIGHTS) == set(TRAIN_SYNTHS) and sum(TRAIN_SYNTH_WEIGHTS.values()) == pytest.approx(1.0)
    # festival's recorded speakers; flite ships voices of the same people, which training must not use
    speakers = ("kal", "ked", "slt")
    assert all(any(s in v for s in speakers) for v in FESTIVAL_VOICES)
    assert not [v for v in FLITE_VOICES for s in speakers if s in v]


@pytest.mark.parametrize("synth", list(SYNTHS))
def test_every_voice_speaks(synth):
    if synth in ABSENT:
        pytest.skip(f"{synth} is not installed")
    for name in SYNTHS[synth]:
        audio = speak(Voice(synth, name), SENTENCE)
        assert audio.dtype == np.float32 and audio.ndim == 1, name
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.01, name
        assert 0.5 < audio.size / RATE < 4.0, (name, audio.size / RATE)  # four words


# The HTS voice ignores Duration_Stretch: festival's hts_engine takes its rate as ("-r" speed) in
# hts_engine_params (fusion/synthesizers.py `_festival`).
SPEED_VOICES = [
    pytest.param(
        synth, name, marks=[_needs(synth)], id=f"{synth}:{name}"
    )
    for synth, names in SYNTHS.items()
    for name in (names if synth != "espeak" else names[:1] + names[-1:])
]


@pytest.mark.parametrize(("synth", "name"), SPEED_VOICES)
def test_speed_changes_the_duration(synth, name):
    fast = speak(Voice(synth, name), SENTENCE, speed=SPEED_RANGE[1])
    slow = speak(Voice(synth, name), SENTENCE, speed=SPEED_RANGE[0])
    assert fast.size < 0.9 * slow.size, (fast.size, slow.size)


def test_unknown_voices_are_refused():
    for voice in (Voice("espeak", "en-xx"), Voice("flite", "kal"), Voice("festival", "awb"), Voice("nope", "heart")):
        with pytest.raises(ValueError, match="unknown voice"):
            speak(voice, SENTENCE)


# --- augmentation ------------------------------------------------------------------------------------


def _speechlike(n: int = RATE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def _power(x: np.ndarray) -> float:
    return float(np.mean(x.astype(np.float64) ** 2))


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
@pytest.mark.parametrize("snr_db", [5.0, 17.5, 30.0])
def test_noise_is_added_at_the_asked_snr(color, snr_db):
    clean = _speechlike()
    noisy = augment.add_noise(clean, snr_db, color, np.random.default_rng(1))
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    measured = 10 * math.log10(_power(clean) / _power(noisy - clean))
    assert abs(measured - snr_db) < 1.0, measured


def _band_share(x: np.ndarray, low: float, high: float = RATE / 2) -> float:
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / RATE)
    return float(power[(freqs >= low) & (freqs <= high)].sum() / power.sum())


@pytest.mark.parametrize("n", [RATE, 12345])
def test_telephone_keeps_the_band_and_the_length(n):
    noise = _speechlike(n)
    assert _band_share(noise, 3500) > 0.5  # white: over half its energy above the telephone band
    phone = augment.telephone(noise)
    assert phone.dtype == np.float32 and abs(phone.size - n) <= 4
    assert _band_share(phone, 3500) < 1e-3  # measured 3e-5 (mu-law quantisation noise)
    t = np.arange(n) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    assert _band_share(augment.telephone(tone), 950, 1050) > 0.9  # inside the band: kept


def test_apply_is_seeded_and_sets_the_level():
    audio = _speechlike()
    for kind in augment.KINDS:
        once = augment.apply(audio, kind, np.random.default_rng(7))
        again = augment.apply(audio, kind, np.random.default_rng(7))
        other = augment.apply(audio, kind, np.random.default_rng(8))
        assert np.array_equal(once, again) and not np.array_equal(once, other), kind
        assert once.dtype == np.float32 and abs(once.size - audio.size) <= 4, kind
        peak_db = 20 * math.log10(np.abs(once).max())
        assert augment.PEAK_DB[0] - 0.01 <= peak_db <= augment.PEAK_DB[1] + 0.01, (kind, peak_db)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.apply(audio, "reverb", np.random.default_rng(0))
    draws = [augment.draw(np.random.default_rng(0)) for _ in range(3)]
    rng = np.random.default_rng(0)
    shares = np.mean([[augment.draw(rng) == k for k in augment.KINDS] for _ in range(2000)], axis=0)
    assert len(set(draws)) == 1 and np.allclose(shares, augment.TRAIN_WEIGHTS, atol=0.04)


# --- held-out templates and the corpus plan --------------------------------------------------------


def _pattern(template: str) -> re.Pattern:
    """A template as a regex: each slot any of its values (fill capitalises the first letter)."""
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+?)2?\}", template):
        out += re.escape(template[pos : m.start()]) + "(?:" + "|".join(map(re.escape, SLOTS[m.group(1)])) + ")"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]), re.IGNORECASE)


def _matches(templates: dict[str, tuple[str, ...]]):
    patterns = [_pattern(t) for group in templates.values() for t in group]
    return lambda sentence: any(p.fullmatch(sentence) for p in patterns)


@pytest.mark.parametrize("per_domain", [1, 2])
def test_split_templates_holds_out_whole_templates(per_domain):
    train, heldout = split_templates(0, per_domain)
    assert set(train) == set(heldout) == set(TEMPLATES)
    for domain, templates in TEMPLATES.items():
        assert len(heldout[domain]) == per_domain and not set(heldout[domain]) & set(train[domain])
        assert sorted(train[domain] + heldout[domain]) == sorted(templates)
    assert split_templates(0, per_domain) == (train, heldout)
    assert any(split_templates(seed, per_domain)[1] != heldout for seed in range(1, 4))


def _plan_config(**overrides) -> SpeechDataConfig:
    sizes = {"template_sentences": 300, "llm_sentences": 3, "prose_sentences": 0, "eval_clips": 40}
    return SpeechDataConfig(out_dir="unused", **(sizes | overrides))


LLM_SENTENCES = [
    "My blender sounds like a jet engine.",
    FREEFORM_SENTENCES[3],
    "Nobody answers the phone at your shop.",
]


def test_plan_sentences_keeps_the_eval_splits_unseen():
    config = _plan_config()
    plan = plan_sentences(config, LLM_SENTENCES)
    texts = {split: [t for _, t in pairs] for split, pairs in plan.items()}
    train = set(texts["train"])
    assert set(plan) == set(SPLITS) and len(train) == len(texts["train"])
    assert len(texts["eval_templates"]) == len(texts["eval_synth"]) == config.eval_clips
    assert texts["eval_freeform"] == list(FREEFORM_SENTENCES)
    assert not train & set(texts["eval_synth"]) and not train & set(FREEFORM_SENTENCES)
    assert not set(texts["eval_synth"]) & set(FREEFORM_SENTENCES)
    # A sentence of the free-form list stays out of training even when the LLM writes it.
    llm = {t for src, t in plan["train"] + plan["eval_synth"] if src == "llm"}
    assert llm == {LLM_SENTENCES[0], LLM_SENTENCES[2]}

    train_templates, heldout_templates = split_templates(config.seed, config.heldout_templates_per_domain)
    from_training, from_heldout = _matches(train_templates), _matches(heldout_templates)
    assert all(from_heldout(t) and not from_training(t) for t in texts["eval_templates"])
    templated = [t for src, t in plan["train"] if src in TEMPLATES]
    assert templated and all(from_training(t) and not from_heldout(t) for t in templated)
    assert {src for src, _ in plan["eval_templates"]} == set(TEMPLATES)

    assert plan_sentences(config, LLM_SENTENCES) == plan
    # eval_templates does not depend on how many training sentences there are
    smaller = plan_sentences(_plan_config(template_sentences=200), LLM_SENTENCES)
    assert smaller["eval_templates"] == plan["eval_templates"]


def test_plan_clips_speaks_held_out_splits_with_the_held_out_synthesizer():
    config = _plan_config()
    plan = plan_sentences(config, LLM_SENTENCES)
    clips = plan_clips(config, plan)
    assert len({c.id for c in clips}) == len(clips) == sum(len(v) for v in plan.values())
    order = ("eval_templates", "eval_synth", "eval_freeform", "train")  # eval clips first: in the first shard
    assert [(c.split, c.source, c.text) for c in clips] == [(s, src, t) for s in order for src, t in plan[s]]
    by_split = {split: [c for c in clips if c.split == split] for split in SPLITS}
    assert all(c.synth == HELDOUT_SYNTH for s in ("eval_synth", "eval_freeform") for c in by_split[s])
    assert all(c.synth in TRAIN_SYNTHS for s in ("train", "eval_templates") for c in by_split[s])
    assert {c.synth for c in by_split["train"]} == set(TRAIN_SYNTHS)
    for c in clips:
        assert c.voice in SYNTHS[c.synth] and SPEED_RANGE[0] <= c.speed <= SPEED_RANGE[1]
        assert PITCH_RANGE[0] <= c.pitch <= PITCH_RANGE[1]
        assert (c.augment in augment.KINDS) if c.split == "train" else c.augment == "clean"
    assert {c.augment for c in by_split["train"]} == set(augment.KINDS)

    assert plan_clips(config, plan) == clips
    other = plan_clips(config.model_copy(update={"seed": 1}), plan)
    assert [(c.synth, c.voice, c.speed) for c in other] != [(c.synth, c.voice, c.speed) for c in clips]


# --- a tiny build with the real synthesizers --------------------------------------------------------


class BlockWhisper:
    """`[ceil(n / 320), 8]`: each row the RMS of a 20 ms block, repeated (the features follow the audio)."""

    def encode(self, audio: np.ndarray) -> torch.Tensor:
        blocks = -(-audio.size // 320)
        padded = np.zeros(blocks * 320, dtype=np.float64)
        padded[: audio.size] = audio
        rms = np.sqrt((padded.reshape(blocks, 320) ** 2).mean(axis=1))
        return torch.tensor(rms, dtype=torch.float32)[:, None].repeat(1, 8)


@pytest.mark.skipif(bool(ABSENT), reason=f"synthesizers not installed: {sorted(ABSENT)}")
def test_a_tiny_corpus_with_the_real_synthesizers(tmp_path, monkeypatch):
    monkeypatch.setattr(speech_data, "FREEFORM_SENTENCES", FREEFORM_SENTENCES[:2])
    config = SpeechDataConfig(
        out_dir=str(tmp_path / "corpus"),
        template_sentences=6,
        llm_sentences=0,
        prose_sentences=0,
        eval_clips=2,
        shard_size=4,
    )
    whisper = BlockWhisper()
    build_speech_data(config, whisper, None, log=lambda _: None)
    clips = load_manifest(config.out_dir)
    assert {c.split for c in clips} == set(SPLITS) and speech_data.load_answers(config.out_dir) == {}
    recipe = speech_data.load_recipe(config.out_dir)
    assert recipe["heldout_synthesizer"] == HELDOUT_SYNTH
    assert recipe["heldout_templates"] == {d: list(t) for d, t in split_templates(config.seed, 1)[1].items()}
    assert recipe["counts"] == {"train": 4, "eval_templates": 2, "eval_synth": 2, "eval_freeform": 2}
    # render() gives the clip's audio again, exactly: the stored features are those of a fresh render.
    features = load_features(config.out_dir, clips)
    for clip in clips:
        audio = render(clip, config.seed)
        assert np.array_equal(audio, render(clip, config.seed)), clip.id
        assert clip.frames == -(-audio.size // 320)
        assert torch.equal(features[clip.id], whisper.encode(audio).to(torch.float16)), clip.id
