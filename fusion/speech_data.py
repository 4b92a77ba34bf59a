"""The speech corpus for audio-projector training: sentences → espeak-ng speech → cached Whisper features.

Recipe (`SpeechDataConfig`, recorded in `recipe.json` and in every projector checkpoint trained on it):

1. Sentences: slot-filled customer-service templates (`fusion.corpus`), sentences the LLM itself
   writes at high temperature across many topics and personas (cached in `llm_sentences.json`:
   CPU generation is slow), and English prose that installs offline (stdlib docstrings), deduplicated.
2. Splits: whole sentences are held out (`eval_sentences`, spoken by training voices), the same
   held-out sentences are also spoken by held-out voices (`eval_voices`), and a hand-written
   free-form list (`eval_freeform`, held-out voices) checks what no template or generator produced.
3. Each clip: a voice (espeak-ng voice + variant), speed and pitch drawn at random, 16 kHz.
4. Whisper features `[T, d_audio]` at the clip's real length (what serve's AudioEncoder returns),
   stored float16 in safetensors shards, one key per clip. Shards are written one at a time (eval
   clips first), so an interrupted run resumes where it stopped and training can start on the
   shards already complete. Whisper transcripts for `transcript`-mode evaluation are made at eval
   time (re-synthesizing the clip: espeak-ng is deterministic) and cached in `transcripts.json`.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from fusion.corpus import FREEFORM_SENTENCES, prose_sentences, template_sentences
from fusion.shards import (
    Instructions,
    prepare_set_dir,
    read_manifest,
    read_recipe,
    read_tensors,
    write_recipe,
    write_shards,
)

DATA_VERSION = 1
REPEAT_INSTRUCTION = "Repeat exactly what was said."
REPEAT_PARAPHRASES: tuple[str, ...] = (
    "Repeat what was said, word for word.",
    "Say back exactly what you heard.",
    "Write down exactly what the speaker said.",
)
INSTRUCTIONS = Instructions(REPEAT_INSTRUCTION, REPEAT_PARAPHRASES, canonical_share=0.5, media_first_share=0.2)

# espeak-ng voice + variant. Held-out voices share neither the base accent nor the variant with
# any training voice, so `eval_voices` measures speakers the projector never heard.
TRAIN_BASES: tuple[str, ...] = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-029")
TRAIN_VARIANTS: tuple[str, ...] = ("", "+m1", "+m2", "+m3", "+m4", "+m6", "+f1", "+f2", "+klatt")
HELDOUT_VOICES: tuple[str, ...] = ("en-gb-scotland+m7", "en-us-nyc+m5", "en-gb-x-gbcwmd+f5", "en-us-nyc")
SPEED_WPM = (130, 200)
PITCH = (25, 75)

SPLITS = ("train", "eval_sentences", "eval_voices", "eval_freeform")
EVAL_SPLITS = SPLITS[1:]
LLM_SENTENCES = "llm_sentences.json"
SYNTHESIS_THREADS = 2  # espeak-ng subprocesses running ahead of the Whisper encoder


def train_voices() -> list[str]:
    return [base + variant for base in TRAIN_BASES for variant in TRAIN_VARIANTS]


class SpeechDataConfig(BaseModel):
    """How to build the speech corpus."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out_dir: str = Field(description="Directory for the manifest, recipe and feature shards (outside the repo)")
    template_sentences: int = Field(3400, ge=1, description="Distinct slot-filled template sentences")
    llm_sentences: int = Field(300, ge=0, description="Sentences the LLM writes (at most; see llm_budget_s)")
    prose_sentences: int = Field(3000, ge=0, description="Sentences from installed English prose (stdlib docstrings)")
    llm_budget_s: float = Field(420.0, ge=0, description="Wall-clock cap on LLM sentence generation")
    llm_temperature: float = Field(1.1, gt=0, description="Sampling temperature for LLM-written sentences")
    heldout_sentences: int = Field(60, ge=1, description="Sentences held out of training (eval_sentences/voices)")
    shard_size: int = Field(500, ge=1, description="Clips per feature shard")
    seed: int = Field(0, description="Seed for sentences, splits, voices, speeds and pitches")


@dataclass
class Clip:
    """One utterance of the corpus (a manifest line)."""

    id: str
    split: str
    text: str
    source: str  # template domain, "llm" or "freeform"
    voice: str
    speed_wpm: int
    pitch: int
    frames: int = 0
    shard: str = ""
    transcript: str | None = None


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


def plan_clips(config: SpeechDataConfig, llm_sentences: Sequence[str]) -> list[Clip]:
    """Assign every sentence to a split and a voice/speed/pitch; deterministic given the config."""
    rng = random.Random(config.seed)
    pool = [(source, text) for source, text in template_sentences(config.template_sentences, config.seed)]
    known = {text for _, text in pool}
    pool += [("llm", text) for text in llm_sentences if text not in known]
    known |= set(llm_sentences)
    pool += [("prose", t) for t in prose_sentences(config.prose_sentences, config.seed) if t not in known]
    freeform = set(FREEFORM_SENTENCES)
    pool = [(s, t) for s, t in pool if t not in freeform]  # the free-form set must stay unseen
    rng.shuffle(pool)
    heldout, train = pool[: config.heldout_sentences], pool[config.heldout_sentences :]
    voices = train_voices()

    def clip(split: str, i: int, source: str, text: str, voice_pool: Sequence[str]) -> Clip:
        return Clip(
            id=f"{split}-{i:05d}",
            split=split,
            text=text,
            source=source,
            voice=rng.choice(voice_pool),
            speed_wpm=rng.randint(*SPEED_WPM),
            pitch=rng.randint(*PITCH),
        )

    # Eval clips come first so that they sit in the first shard, ready before training data ends.
    clips = [clip("eval_sentences", i, s, t, voices) for i, (s, t) in enumerate(heldout)]
    clips += [clip("eval_voices", i, s, t, HELDOUT_VOICES) for i, (s, t) in enumerate(heldout)]
    clips += [clip("eval_freeform", i, "freeform", t, HELDOUT_VOICES) for i, t in enumerate(FREEFORM_SENTENCES)]
    clips += [clip("train", i, s, t, voices) for i, (s, t) in enumerate(train)]
    return clips


# --- building ---------------------------------------------------------------------------------------


def build_speech_data(
    config: SpeechDataConfig,
    whisper_runtime,
    llm_factory: Callable[[], tuple[object, object]] | None,
    synthesize: Callable[..., object],
    log: Callable[[str], None] = print,
) -> Path:
    """Write the corpus under `config.out_dir`; resumes from existing shards. Returns the directory.

    `llm_factory()` → (model, tokenizer) for LLM-written sentences (None: templates only);
    `synthesize(text, voice=, speed_wpm=, pitch=)` → float32 16 kHz audio (modalities.speech.espeak).
    """
    out = prepare_set_dir(config, config.out_dir, "speech corpus")
    llm_sentences = _llm_sentences(config, out, llm_factory, log)
    clips = plan_clips(config, llm_sentences)
    write_recipe(out, _recipe(config, clips, llm_sentences))
    with ThreadPoolExecutor(max_workers=SYNTHESIS_THREADS) as pool:

        def encode(shard: list[Clip], progress: Callable[[int], object]) -> dict[str, torch.Tensor]:
            tensors: dict[str, torch.Tensor] = {}
            # espeak runs in subprocesses, so synthesis overlaps with encoding in this thread.
            audios = pool.map(lambda c: synthesize(c.text, voice=c.voice, speed_wpm=c.speed_wpm, pitch=c.pitch), shard)
            for clip, audio in zip(shard, audios):
                features = whisper_runtime.encode(audio)
                tensors[clip.id] = features.to(torch.float16).contiguous()
                clip.frames = int(features.shape[0])
                progress(1)
            return tensors

        write_shards(out, clips, config.shard_size, encode, desc="speech clips", unit="clip")
    return out


def _llm_sentences(
    config: SpeechDataConfig, out: Path, llm_factory: Callable[[], tuple[object, object]] | None, log: Callable[[str], None]
) -> list[str]:
    """The LLM-written sentences: cached in the corpus directory, else generated (and cached)."""
    llm_path = out / LLM_SENTENCES
    if llm_path.exists():
        return json.loads(llm_path.read_text())
    if not config.llm_sentences or llm_factory is None:
        return []
    model, tokenizer = llm_factory()
    t0 = time.perf_counter()
    sentences = generate_llm_sentences(
        model, tokenizer, config.llm_sentences, config.llm_budget_s, config.llm_temperature, config.seed
    )
    log(f"LLM wrote {len(sentences)} sentences in {time.perf_counter() - t0:.0f} s")
    llm_path.write_text(json.dumps(sentences, indent=1))
    return sentences


def _recipe(config: SpeechDataConfig, clips: Sequence[Clip], llm_sentences: Sequence[str]) -> dict:
    return {
        "version": DATA_VERSION,
        "config": config.model_dump(),
        "train_voices": train_voices(),
        "heldout_voices": list(HELDOUT_VOICES),
        "speed_wpm": list(SPEED_WPM),
        "pitch": list(PITCH),
        "instructions": INSTRUCTIONS.all(),
        "counts": {split: sum(c.split == split for c in clips) for split in SPLITS},
        "distinct_sentences": len({c.text for c in clips}),
        "llm_sentences": len(llm_sentences),
        "synthesizer": "espeak-ng",
    }


# --- reading ----------------------------------------------------------------------------------------


def load_manifest(data_dir: str | Path) -> list[Clip]:
    """Every clip of the corpus, or of its complete shards while `make-speech-data` still runs."""
    return read_manifest(data_dir, Clip, "speech corpus", "chorus make-speech-data")


def load_recipe(data_dir: str | Path) -> dict:
    return read_recipe(data_dir)


def load_features(data_dir: str | Path, clips: Iterable[Clip]) -> dict[str, torch.Tensor]:
    """clip id → float16 features `[T, d_audio]` for `clips` (reads only the shards needed)."""
    return read_tensors(data_dir, ((clip.id, clip.shard, clip.id) for clip in clips))
