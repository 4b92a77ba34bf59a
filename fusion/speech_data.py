"""The speech corpus for audio-projector training: sentences → four synthesizers → cached Whisper features.

Recipe (`SpeechDataConfig`, recorded in `recipe.json` and in every projector checkpoint trained on it):

1. Sentences: slot-filled customer-service templates (`fusion.corpus`), sentences the LLM itself
   writes at high temperature across many topics and personas (cached in `llm_sentences.json`), and
   English prose that installs offline (stdlib docstrings), deduplicated.
2. Splits: `eval_templates` — sentences filled from whole templates held out of training, spoken by
   the training synthesizers; `eval_synth` — unseen sentences of the training kinds spoken by the
   held-out synthesizer (`fusion.synthesizers.HELDOUT_SYNTH`); `eval_freeform` — a hand-written list,
   held-out synthesizer. Nothing is tuned on them.
3. Each clip: a synthesizer and voice, speaking rate (and espeak pitch) drawn at random; training
   clips also get a channel augmentation (`fusion.augment`: noise, telephone band, level), 16 kHz.
4. Whisper features `[T, d_audio]` at the clip's real length (what serve's AudioEncoder returns),
   stored float16 in safetensors shards, one key per clip. Shards are written one at a time (eval
   clips first), so an interrupted run resumes where it stopped and training can start on the
   shards already complete. Whisper transcripts for `transcript`-mode evaluation are made at eval
   time (`render` re-synthesizes a clip exactly: every draw is seeded) and cached in `transcripts.json`.
5. Last, the teacher's targets: the LLM's own greedy answer to each of the first `answer_sentences`
   training sentences as text (`fusion.teacher`, `answers.json`, written after every batch; training
   reads whatever is there, so it can start before they are all written).
"""

from __future__ import annotations

import json
import random
import re
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fusion import augment
from fusion.corpus import FREEFORM_SENTENCES, prose_sentences, split_templates, template_sentences
from fusion.shards import (
    Instructions,
    prepare_set_dir,
    read_manifest,
    read_recipe,
    read_tensors,
    write_recipe,
    write_shards,
)
from fusion.synthesizers import HELDOUT_SYNTH, PITCH_RANGE, SPEED_RANGE, SYNTHS, TRAIN_SYNTH_WEIGHTS, Voice, speak

DATA_VERSION = 2
REPEAT_INSTRUCTION = "Repeat exactly what was said."
REPEAT_PARAPHRASES: tuple[str, ...] = (
    "Repeat what was said, word for word.",
    "Say back exactly what you heard.",
    "Write down exactly what the speaker said.",
)
INSTRUCTIONS = Instructions(REPEAT_INSTRUCTION, REPEAT_PARAPHRASES, canonical_share=0.5, media_first_share=0.2)

SPLITS = ("train", "eval_templates", "eval_synth", "eval_freeform")
EVAL_SPLITS = SPLITS[1:]
LLM_SENTENCES = "llm_sentences.json"
ANSWERS = "answers.json"
SYNTHESIS_THREADS = 2  # synthesizer subprocesses running ahead of the Whisper encoder


class SpeechDataConfig(BaseModel):
    """How to build the speech corpus."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out_dir: str = Field(description="Directory for the manifest, recipe and feature shards (outside the repo)")
    template_sentences: int = Field(3000, ge=1, description="Distinct slot-filled sentences from the training templates")
    llm_sentences: int = Field(200, ge=0, description="Sentences the LLM writes (at most; see llm_budget_s)")
    prose_sentences: int = Field(2200, ge=0, description="Sentences from installed English prose (stdlib docstrings)")
    llm_budget_s: float = Field(180.0, ge=0, description="Wall-clock cap on LLM sentence generation")
    llm_temperature: float = Field(1.1, gt=0, description="Sampling temperature for LLM-written sentences")
    heldout_templates_per_domain: int = Field(1, ge=1, description="Whole templates per domain held out (eval_templates)")
    eval_clips: int = Field(100, ge=1, description="Clips in eval_templates and in eval_synth each")
    answer_sentences: int = Field(
        2500, ge=0, description="Training sentences (the first of the shuffled pool) the LLM answers: the distillation targets"
    )
    answer_max_tokens: int = Field(32, ge=1, description="Longest teacher answer, in tokens")
    shard_size: int = Field(500, ge=1, description="Clips per feature shard")
    seed: int = Field(0, description="Seed for sentences, splits, voices, speeds, pitches and augmentations")


@dataclass
class Clip:
    """One utterance of the corpus (a manifest line)."""

    id: str
    split: str
    text: str
    source: str  # template domain, "llm", "prose" or "freeform"
    synth: str  # fusion.synthesizers engine
    voice: str
    speed: float
    pitch: int
    augment: str  # fusion.augment kind
    frames: int = 0
    shard: str = ""
    transcript: str | None = None


def render(clip: Clip, seed: int = 0) -> np.ndarray:
    """The clip's audio (16 kHz float32), the same every time: synthesis and augmentation are seeded."""
    audio = speak(Voice(clip.synth, clip.voice), clip.text, clip.speed, clip.pitch)
    rng = np.random.default_rng([seed, zlib.crc32(clip.id.encode())])
    return augment.apply(audio, clip.augment, rng)


# --- LLM-written sentences -------------------------------------------------------------------------

LLM_TOPICS: tuple[str, ...] = (
    "a late pizza delivery", "a broken washing machine", "a gym membership", "a cancelled flight",
    "a hotel booking", "a mobile phone contract", "an electricity bill", "a car repair", "a lost suitcase",
    "a library fine", "a bank transfer", "a dentist appointment", "concert tickets", "a rented apartment",
    "a water leak", "a train delay", "online grocery shopping", "a streaming subscription", "a pet insurance claim",
    "a wedding dress", "a school uniform", "a furniture assembly service", "a taxi ride", "a parking fine",
    "a broken laptop screen", "a gift that arrived late", "a noisy neighbour complaint", "a medical prescription",
    "a software licence", "a cooking class", "a house move", "a hair salon visit", "a garden centre order",
    "a damaged rental car", "an internet outage", "a loyalty card", "a charity donation", "a bicycle repair",
    "a hearing aid", "a cinema booking", "a kitchen renovation", "a baby monitor", "a photo printing order",
)
LLM_PERSONAS: tuple[str, ...] = (
    "an angry", "a polite", "an elderly", "a confused", "a busy", "a cheerful", "a worried", "a sarcastic",
    "a very formal", "a chatty", "a tired", "an impatient",
)
LLM_MAX_NEW_TOKENS = 32
LLM_BATCH = 24
MIN_WORDS, MAX_WORDS = 4, 24
_CLEAN_RE = re.compile(r"^[A-Za-z][A-Za-z ,.'?!-]*[.?!]$")
_SENTENCE_END_RE = re.compile(r"(?<=[.?!])\s")


def clean_generated(text: str) -> str | None:
    """First sentence of a generation if it is speakable and evaluable (letters only, 4-24 words)."""
    text = text.strip().strip('"').strip()
    text = _SENTENCE_END_RE.split(text.splitlines()[0] if text else "", maxsplit=1)[0].strip().strip('"')
    if not _CLEAN_RE.match(text) or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
        return None
    return text


@torch.no_grad()
def generate_llm_sentences(model, tokenizer, count: int, budget_s: float, temperature: float, seed: int) -> list[str]:
    """Sample up to `count` distinct customer sentences from the LLM, batched, within `budget_s`."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"  # batched generation continues from the right edge
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    seen: set[str] = set()
    start = time.perf_counter()
    while len(out) < count and time.perf_counter() - start < budget_s:
        prompts = []
        for _ in range(LLM_BATCH):
            messages = [
                {"role": "system", "content": "You write one realistic line a customer says. No quotes, no lists."},
                {
                    "role": "user",
                    "content": f"Write one sentence that {rng.choice(LLM_PERSONAS)} customer says to a support "
                    f"agent about {rng.choice(LLM_TOPICS)}.",
                },
            ]
            prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        generated = model.generate(
            **batch,
            do_sample=True,
            temperature=temperature,
            top_p=0.95,
            max_new_tokens=LLM_MAX_NEW_TOKENS,
            pad_token_id=pad_id,
        )
        for row in tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True):
            sentence = clean_generated(row)
            if sentence and sentence not in seen:
                seen.add(sentence)
                out.append(sentence)
    return out[:count]


# --- corpus plan ------------------------------------------------------------------------------------


def plan_sentences(config: SpeechDataConfig, llm_sentences: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """(source, sentence) per split. `eval_templates` comes from whole held-out templates;
    `eval_synth` is drawn from the training pool (and then removed from it) so that only its
    synthesizer is new; `eval_freeform` is the hand-written list. Deterministic given the config."""
    rng = random.Random(config.seed)
    train_templates, heldout_templates = split_templates(config.seed, config.heldout_templates_per_domain)
    pool = template_sentences(config.template_sentences, config.seed, train_templates)
    known = {text for _, text in pool}
    pool += [("llm", t) for t in llm_sentences if t not in known]
    known |= set(llm_sentences)
    pool += [("prose", t) for t in prose_sentences(config.prose_sentences, config.seed) if t not in known]
    freeform = set(FREEFORM_SENTENCES)
    pool = [(src, t) for src, t in pool if t not in freeform]  # the free-form set must stay unseen
    rng.shuffle(pool)
    unseen = template_sentences(config.eval_clips, config.seed + 1, heldout_templates)
    return {
        "eval_templates": unseen,
        "eval_synth": pool[: config.eval_clips],
        "eval_freeform": [("freeform", t) for t in FREEFORM_SENTENCES],
        "train": pool[config.eval_clips :],
    }


def plan_clips(config: SpeechDataConfig, sentences: dict[str, list[tuple[str, str]]]) -> list[Clip]:
    """A voice, speed, pitch and augmentation for every sentence; deterministic given the config.
    Training clips: a training synthesizer (by `TRAIN_SYNTH_WEIGHTS`) and a drawn augmentation;
    eval_templates: a training synthesizer, clean; eval_synth and eval_freeform: the held-out
    synthesizer, clean."""
    rng = random.Random(config.seed)
    np_rng = np.random.default_rng(config.seed)
    synths, weights = zip(*TRAIN_SYNTH_WEIGHTS.items())

    def clip(split: str, i: int, source: str, text: str) -> Clip:
        synth = HELDOUT_SYNTH if split in ("eval_synth", "eval_freeform") else rng.choices(synths, weights)[0]
        return Clip(
            id=f"{split}-{i:05d}",
            split=split,
            text=text,
            source=source,
            synth=synth,
            voice=rng.choice(SYNTHS[synth]),
            speed=round(rng.uniform(*SPEED_RANGE), 3),
            pitch=rng.randint(*PITCH_RANGE),
            augment=augment.draw(np_rng) if split == "train" else "clean",
        )

    # Eval clips come first so that they sit in the first shard, ready before training data ends.
    return [clip(split, i, src, text) for split in (*EVAL_SPLITS, "train") for i, (src, text) in enumerate(sentences[split])]


# --- building ---------------------------------------------------------------------------------------


def build_speech_data(
    config: SpeechDataConfig,
    whisper_runtime,
    llm_factory: Callable[[], tuple[object, object]] | None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the corpus under `config.out_dir`; resumes from existing shards. Returns the directory.

    `llm_factory()` → (model, tokenizer) for LLM-written sentences and the teacher's answers
    (None: templates and prose only, no answers)."""
    from fusion.synthesizers import missing

    if absent := missing():
        raise RuntimeError(f"synthesizers not installed: {', '.join(absent)} (make setup installs them)")
    out = prepare_set_dir(config, config.out_dir, "speech corpus")
    llm = _Lazy(llm_factory)
    llm_sentences = _llm_sentences(config, out, llm, log)
    sentences = plan_sentences(config, llm_sentences)
    clips = plan_clips(config, sentences)
    write_recipe(out, _recipe(config, clips, llm_sentences))
    with ThreadPoolExecutor(max_workers=SYNTHESIS_THREADS) as pool:

        def encode(shard: list[Clip], progress: Callable[[int], object]) -> dict[str, torch.Tensor]:
            tensors: dict[str, torch.Tensor] = {}
            # The synthesizers run in subprocesses (hibari in ONNX Runtime), overlapping the encoder.
            audios = pool.map(lambda c: render(c, config.seed), shard)
            for clip, audio in zip(shard, audios):
                features = whisper_runtime.encode(audio)
                tensors[clip.id] = features.to(torch.float16).contiguous()
                clip.frames = int(features.shape[0])
                progress(1)
            return tensors

        write_shards(out, clips, config.shard_size, encode, desc="speech clips", unit="clip")
    # Last: the features are what training starts on; the answers only add the "answer" turns.
    _answers(config, out, [t for _, t in sentences["train"]][: config.answer_sentences], llm, log)
    return out


class _Lazy:
    """The LLM, loaded on first use only (a resumed build with every cache written needs none)."""

    def __init__(self, factory: Callable[[], tuple[object, object]] | None) -> None:
        self.factory, self.value = factory, None

    def __call__(self) -> tuple[object, object] | None:
        if self.value is None and self.factory is not None:
            self.value = self.factory()
        return self.value


def _llm_sentences(config: SpeechDataConfig, out: Path, llm: _Lazy, log: Callable[[str], None]) -> list[str]:
    """The LLM-written sentences: cached in the corpus directory, else generated (and cached)."""
    llm_path = out / LLM_SENTENCES
    if llm_path.exists():
        return json.loads(llm_path.read_text())
    if not config.llm_sentences or llm.factory is None:
        return []
    model, tokenizer = llm()
    t0 = time.perf_counter()
    sentences = generate_llm_sentences(
        model, tokenizer, config.llm_sentences, config.llm_budget_s, config.llm_temperature, config.seed
    )
    log(f"LLM wrote {len(sentences)} sentences in {time.perf_counter() - t0:.0f} s")
    llm_path.write_text(json.dumps(sentences, indent=1))
    return sentences


def _answers(config: SpeechDataConfig, out: Path, texts: Sequence[str], llm: _Lazy, log: Callable[[str], None]) -> dict[str, str]:
    """The LLM's greedy answer to each sentence as text, cached in `answers.json` (written after
    every batch, so an interrupted build resumes)."""
    from fusion.teacher import teacher_answers

    path = out / ANSWERS
    cache: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    cache = {t: cache[t] for t in texts if t in cache}  # only these sentences: the corpus stays reproducible
    if llm.factory is None:
        return cache
    todo = [t for t in dict.fromkeys(texts) if t not in cache]
    if todo:
        model, tokenizer = llm()
        t0 = time.perf_counter()
        for batch_answers in teacher_answers(model, tokenizer, todo, config.answer_max_tokens):
            cache.update(batch_answers)
            path.write_text(json.dumps(cache, indent=0))
        log(f"LLM answered {len(todo)} sentences in {time.perf_counter() - t0:.0f} s")
    return cache


def _recipe(config: SpeechDataConfig, clips: Sequence[Clip], llm_sentences: Sequence[str]) -> dict:
    return {
        "version": DATA_VERSION,
        "config": config.model_dump(),
        "synthesizers": {name: list(voices) for name, voices in SYNTHS.items()},
        "heldout_synthesizer": HELDOUT_SYNTH,
        "train_synthesizer_weights": TRAIN_SYNTH_WEIGHTS,
        "heldout_templates": {d: list(t) for d, t in split_templates(config.seed, config.heldout_templates_per_domain)[1].items()},
        "speed": list(SPEED_RANGE),
        "pitch_espeak": list(PITCH_RANGE),
        "augmentations": dict(zip(augment.KINDS, augment.TRAIN_WEIGHTS)),
        "instructions": INSTRUCTIONS.all(),
        "counts": {split: sum(c.split == split for c in clips) for split in SPLITS},
        "distinct_sentences": len({c.text for c in clips}),
        "llm_sentences": len(llm_sentences),
    }


# --- reading ----------------------------------------------------------------------------------------


def load_manifest(data_dir: str | Path) -> list[Clip]:
    """Every clip of the corpus, or of its complete shards while `make-speech-data` still runs."""
    return read_manifest(data_dir, Clip, "speech corpus", "chorus make-speech-data")


def load_recipe(data_dir: str | Path) -> dict:
    return read_recipe(data_dir)


def load_answers(data_dir: str | Path) -> dict[str, str]:
    """sentence → the LLM's answer to it as text, for the sentences answered so far (may be empty)."""
    path = Path(data_dir).expanduser() / ANSWERS
    return json.loads(path.read_text()) if path.exists() else {}


def load_features(data_dir: str | Path, clips: Iterable[Clip]) -> dict[str, torch.Tensor]:
    """clip id → float16 features `[T, d_audio]` for `clips` (reads only the shards needed)."""
    return read_tensors(data_dir, ((clip.id, clip.shard, clip.id) for clip in clips))
