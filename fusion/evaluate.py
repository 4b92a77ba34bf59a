"""Projector evaluation.

Audio: the "repeat what was said" task, word error rate per split and fusion mode (below).
Images: captioning held-out images of the synthetic set (`fusion.vision_data`), trained vs untrained
projector: teacher-forced caption cross-entropy, and the attributes (count, colour, shape, position)
a greedy caption gets right (`caption_figures`, `evaluate_vision_cli`).

Modes compared on the same clips and the same canonical instruction (`Repeat exactly what was said.`):

- `embed`: the trained projector's soft tokens (what the projector carries);
- `transcript`: Whisper's own transcript inserted as text (the cascade) — SmolLM2 tends to answer
  the caller rather than repeat, which this figure shows;
- `untrained`: a freshly initialised projector of the same kind, seeded as serve seeds its random
  projector — the floor.

Decoding is greedy and batched (left-padded, positions from the attention mask) with a KV cache.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer
import torch
from torch import nn

from fusion.prompt import MediaItem, MediaKind, Message, PromptPlan, build_prompt, splice

AUDIO_INDEX = 0
MAX_NEW_TOKENS_SLACK = 16  # room beyond the reference's own length for a few extra words
EVAL_BATCH = 8
TRANSCRIPTS_FILE = "transcripts.json"
EVAL_OUTPUTS_FILE = "eval_outputs.json"
SAMPLES_PER_SPLIT = 3
_WORD_RE = re.compile(r"[a-z0-9']+")


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation (quotes and a trailing period are not word errors)."""
    return _WORD_RE.findall(text.lower().replace("’", "'"))


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference word count) after `normalize` (jiwer)."""
    ref, hyp = " ".join(normalize(reference)), " ".join(normalize(hypothesis))
    if not ref:
        return len(hyp.split()), 0
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word errors over total reference words."""
    errors = words = 0
    for ref, hyp in zip(references, hypotheses):
        e, n = word_errors(ref, hyp)
        errors, words = errors + e, words + n
    return errors / max(1, words)


def prompt_embeds(
    model: nn.Module,
    tokenizer,
    instruction: str,
    mode: str,
    projector: nn.Module | None = None,
    features: torch.Tensor | None = None,
    transcript: str | None = None,
    kind: MediaKind = "audio",
) -> torch.Tensor:
    """The serve-time prompt for one media item: `[L, H]` (user text part, then the media part)."""
    messages = [Message("user", [instruction, MediaItem(kind, AUDIO_INDEX, transcript)])]
    return plan_embeds(model, build_prompt(messages, tokenizer, mode), projector, features)


def plan_embeds(
    model: nn.Module, plan: PromptPlan, projector: nn.Module | None = None, features: torch.Tensor | None = None
) -> torch.Tensor:
    """A prompt plan with at most one media slot (index AUDIO_INDEX) → `[L, H]`, the slot filled by
    `projector(features)`."""
    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    with torch.no_grad():
        text_embeds = [embedding(torch.tensor(p, dtype=torch.long, device=device)) for p in plan.pieces if isinstance(p, list)]
        media = {}
        if plan.slots:
            assert projector is not None and features is not None
            frames = features.to(device=device, dtype=torch.float32).unsqueeze(0)
            media[AUDIO_INDEX] = projector(frames)[0].to(text_embeds[0].dtype)
    inputs, _mask, _counts = splice(plan, text_embeds, media)
    return inputs[0]


@torch.no_grad()
def greedy_batch(model: nn.Module, prompts: Sequence[torch.Tensor], max_new_tokens: int, eos_ids: set[int]) -> list[list[int]]:
    """Greedy continuation of several `[L_i, H]` prompts at once → generated token ids (EOS dropped)."""
    batch, longest, hidden = len(prompts), max(p.shape[0] for p in prompts), prompts[0].shape[1]
    inputs = prompts[0].new_zeros(batch, longest, hidden)
    device = inputs.device
    mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):  # left padding: every prompt ends at the right edge
        inputs[i, longest - p.shape[0] :] = p
        mask[i, longest - p.shape[0] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True)
    generated: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_ids), device=device)
    for _ in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1)
        done_now = torch.isin(token, eos)
        for i in range(batch):
            if not done[i] and not done_now[i]:
                generated[i].append(int(token[i]))
        done |= done_now
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.long, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=token.unsqueeze(1),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
    return generated


def greedy_texts(
    model: nn.Module, tokenizer, eos_ids: set[int], prompts: Sequence[torch.Tensor], max_new_tokens: int
) -> list[str]:
    """Greedy answers to `[L_i, H]` prompts, decoded, EVAL_BATCH prompts at a time."""
    texts: list[str] = []
    for i in range(0, len(prompts), EVAL_BATCH):
        for ids in greedy_batch(model, prompts[i : i + EVAL_BATCH], max_new_tokens, eos_ids):
            texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts


def repeat_outputs(
    model: nn.Module,
    tokenizer,
    eos_ids: set[int],
    clips: Sequence[dict],
    mode: str,
    projector: nn.Module | None,
    instruction: str,
) -> list[str]:
    """The LLM's answers to "repeat" for `clips` (dicts with features / transcript / text)."""
    answers: list[str] = []
    for i in range(0, len(clips), EVAL_BATCH):
        group = clips[i : i + EVAL_BATCH]
        prompts = [
            prompt_embeds(model, tokenizer, instruction, "transcript" if mode == "transcript" else "embed", projector, c["features"], c.get("transcript"))
            for c in group
        ]
        budget = max(len(tokenizer.encode(c["text"], add_special_tokens=False)) for c in group) + MAX_NEW_TOKENS_SLACK
        for ids in greedy_batch(model, prompts, budget, eos_ids):
            answers.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return answers


def cached_transcripts(data_dir: Path, clips, whisper_factory) -> dict[str, str]:
    """Whisper's transcript per clip id, made by re-synthesizing the clip, cached in the corpus."""
    from fusion.speech_data import load_recipe, render

    seed = load_recipe(data_dir)["config"]["seed"]
    path = data_dir / TRANSCRIPTS_FILE
    cache = json.loads(path.read_text()) if path.exists() else {}
    missing = [c for c in clips if c.id not in cache]
    if missing:
        runtime = whisper_factory()
        for clip in missing:
            audio = render(clip, seed)
            cache[clip.id] = runtime.transcribe(audio).text.strip()
        path.write_text(json.dumps(cache, indent=1))
    return cache


def cached_outputs(
    data_dir: Path, task: str, mode: str, clips, compute: Callable[[list], list[str]]
) -> list[str]:
    """The LLM's greedy outputs for `clips` in a mode that does not depend on the checkpoint under
    test (reference, transcript, untrained), cached per task in the corpus (`eval_outputs.json`), so
    that measuring a second checkpoint on the same clips only generates its own `embed` outputs."""
    path = data_dir / EVAL_OUTPUTS_FILE
    cache = json.loads(path.read_text()) if path.exists() else {}
    done = cache.setdefault(f"{task}:{mode}", {})
    missing = [c for c in clips if c.id not in done]
    if missing:
        done.update(zip((c.id for c in missing), compute(missing)))
        path.write_text(json.dumps(cache, indent=0))
    return [done[c.id] for c in clips]


def cache_mode(mode: str, spec: dict) -> str:
    """The cache key of a mode's outputs in `eval_outputs.json` (used by the repeat and the answer
    evaluations alike): the untrained projector's outputs depend on its kind and sizes."""
    return f"{mode}:{spec['kind']}:{spec['in_dim']}x{spec['out_dim']}" if mode == "untrained" else mode


@dataclass
class EvalInputs:
    """What both audio evaluations (repeat WER, answer agreement) start from."""

    runtime: object  # modalities.llm.LLMRuntime
    projector: nn.Module
    untrained: nn.Module
    untrained_spec: dict  # serve's untrained projector (its cache key: `cache_mode`)
    by_split: dict[str, list]
    features: dict[str, torch.Tensor]
    transcripts: dict[str, str]


def load_eval_inputs(
    checkpoint: str, data_dir: Path, limit: int, threads: int, transcripts: bool = True, engine: str | None = None
) -> EvalInputs:
    """The packaged LLM, the checkpoint's projector and serve's untrained one (the audio modality's
    default kind, seeded with 0, as `LLMDecoder._projector` builds it), the first `limit` clips of each held-out split, their
    cached Whisper features and (optionally) Whisper's cached transcripts."""
    from fusion.checkpoint import llm_identity, load_projector, whisper_identity
    from fusion.projectors import build_projector
    from fusion.registry import spec as modality_spec
    from fusion.speech_data import EVAL_SPLITS, load_features, load_manifest
    from modalities.audio import WhisperConfig, WhisperRuntime
    from modalities.llm import LLMConfig, LLMRuntime

    torch.set_num_threads(threads)
    config = LLMConfig(threads=threads) if engine is None else LLMConfig(threads=threads, engine=engine)
    runtime = LLMRuntime.from_config(config)
    projector, meta = load_projector(
        checkpoint, llm_hidden_size=runtime.hidden_size, llm=llm_identity("packaged"), encoder=whisper_identity("packaged")
    )
    spec = meta["projector"]
    # The floor is what serve runs with no checkpoint: the modality's default kind, seeded with 0.
    untrained_spec = {**spec, "kind": modality_spec("audio").default_projector}
    torch.manual_seed(0)
    untrained = build_projector(untrained_spec["kind"], spec["in_dim"], spec["out_dim"]).eval()
    clips = [c for c in load_manifest(data_dir) if c.split in EVAL_SPLITS]
    by_split = {s: [c for c in clips if c.split == s][:limit] for s in EVAL_SPLITS}
    chosen = [c for group in by_split.values() for c in group]
    heard = (
        cached_transcripts(data_dir, chosen, lambda: WhisperRuntime.from_config(WhisperConfig(threads=threads)))
        if transcripts
        else {}
    )
    return EvalInputs(runtime, projector, untrained, untrained_spec, by_split, load_features(data_dir, chosen), heard)


def evaluate_cli(
    checkpoint: str,
    data_dir: str,
    limit: int,
    modes: Sequence[str],
    write_metadata: bool,
    threads: int,
    report: str | None = None,
    baseline: str | None = None,
) -> dict:
    """`chorus eval-projector`: WER table per split × mode; optionally into the checkpoint metadata.

    `baseline`: a report JSON from an earlier run on the same clips (e.g. `transcript,untrained`,
    which do not depend on the trained projector) whose modes are merged into this result."""
    from fusion.checkpoint import update_metadata
    from fusion.speech_data import EVAL_SPLITS, REPEAT_INSTRUCTION

    known = {"embed", "transcript", "untrained"}
    if unknown := set(modes) - known:
        raise ValueError(f"unknown eval modes {sorted(unknown)}; known: {sorted(known)}")
    root = Path(data_dir).expanduser()
    inputs = load_eval_inputs(checkpoint, root, limit, threads, transcripts="transcript" in modes)
    runtime, by_split, features, transcripts = inputs.runtime, inputs.by_split, inputs.features, inputs.transcripts
    eos = set(runtime.eos_token_ids)
    projectors = {"embed": inputs.projector, "untrained": inputs.untrained, "transcript": None}
    figures: dict[str, dict] = {}
    for split, group in by_split.items():
        refs = [c.text for c in group]
        figures[split] = {"clips": len(group)}
        for mode in modes:
            start = time.perf_counter()

            def run(chosen, mode=mode):
                rows = [{"text": c.text, "features": features[c.id], "transcript": transcripts.get(c.id)} for c in chosen]
                return repeat_outputs(runtime.model, runtime.tokenizer, eos, rows, mode, projectors[mode], REPEAT_INSTRUCTION)

            answers = run(group) if mode == "embed" else cached_outputs(root, "repeat", cache_mode(mode, inputs.untrained_spec), group, run)
            figures[split][mode] = {
                "wer": round(wer(refs, answers), 4),
                "seconds": round(time.perf_counter() - start, 1),
                "samples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, answers))[:SAMPLES_PER_SPLIT]],
                # [word errors, reference words] per clip: what `chorus compare-projectors` pairs up
                "per_clip": {c.id: list(word_errors(c.text, h)) for c, h in zip(group, answers)},
            }
            print(f"{split:15s} {mode:10s} WER {figures[split][mode]['wer']:.3f}  ({len(group)} clips)", flush=True)
        if "transcript" in modes:
            # Whisper's own transcript against the reference: the ceiling the cascade starts from.
            figures[split]["whisper_transcript_wer"] = round(wer(refs, [transcripts[c.id] for c in group]), 4)

    if baseline:
        earlier = json.loads(Path(baseline).read_text())["splits"]
        for split, figs in earlier.items():
            for key, value in figs.items():
                figures.setdefault(split, {}).setdefault(key, value)
        modes = [m for m in ("embed", "transcript", "untrained") if m in figures[EVAL_SPLITS[0]]]
    table = ["| split | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for split in EVAL_SPLITS:
        table.append(f"| {split} | " + " | ".join(f"{figures[split][m]['wer'] * 100:.1f} %" for m in modes) + " |")
    print("\n".join(table))
    result = {"task": "repeat", "instruction": REPEAT_INSTRUCTION, "decoding": "greedy", "splits": figures}
    if write_metadata:
        update_metadata(checkpoint, eval=result)
    if report:
        Path(report).write_text(json.dumps(result, indent=2))
    return result


# --- images ------------------------------------------------------------------------------------------

CAPTION_MAX_NEW_TOKENS = 24  # the set's captions are 7-10 tokens; room for a few more words


def caption_figures(
    model: nn.Module,
    tokenizer,
    eos_ids: set[int],
    examples: Sequence,
    scenes: Sequence | None,
    projector: nn.Module,
    samples: int = SAMPLES_PER_SPLIT,
) -> dict:
    """Caption figures of `projector` on image `examples` (`fusion.train.Example`, kind "image"):
    teacher-forced cross-entropy on the caption tokens, greedy captions, and — where the true
    content is known (`scenes`, `fusion.vision_data.Scene`, drawn sets) — per attribute the share
    of captions that name it right (`all`: all four right; `colour_shape`: the colour × shape pair,
    what held-out combinations test)."""
    from fusion.train import eval_loss
    from fusion.vision_data import ATTRIBUTES, attribute_hits

    assert scenes is None or len(examples) == len(scenes), f"{len(examples)} examples, {len(scenes)} scenes"
    ce = eval_loss(projector, model, tokenizer, examples, EVAL_BATCH)
    prompts = [prompt_embeds(model, tokenizer, ex.instruction, "embed", projector, ex.features, kind="image") for ex in examples]
    captions = greedy_texts(model, tokenizer, eos_ids, prompts, CAPTION_MAX_NEW_TOKENS)
    figures = {
        "images": len(examples),
        "caption_ce": ce,
        "samples": [{"ref": ex.target, "hyp": c} for ex, c in list(zip(examples, captions))[:samples]],
    }
    if scenes is not None:
        hits = [attribute_hits(scene, caption) for scene, caption in zip(scenes, captions)]
        n = max(1, len(hits))
        accuracy = {name: round(sum(h[name] for h in hits) / n, 4) for name in ATTRIBUTES}
        accuracy["colour_shape"] = round(sum(h["colour"] and h["shape"] for h in hits) / n, 4)
        accuracy["all"] = round(sum(all(h.values()) for h in hits) / n, 4)
        figures["attribute_accuracy"] = accuracy
    return figures


def evaluate_vision_cli(
    checkpoint: str,
    data_dir: str,
    limit: int,
    write_metadata: bool,
    threads: int,
    report: str | None = None,
    device: str = "cpu",
) -> dict:
    """`chorus eval-projector` for an image projector: trained vs untrained (serve's seed-0 projector
    of the same kind) on each held-out split of the image set, greedy, canonical instruction."""
    from fusion.checkpoint import ModelIdentity, llm_identity, load_projector, update_metadata
    from fusion.projectors import build_projector
    from fusion.train import vision_examples
    from fusion.vision_data import CAPTION_INSTRUCTION, eval_splits, load_manifest, load_recipe
    from modalities.llm import LLMConfig, LLMRuntime

    torch.set_num_threads(threads)
    recipe = load_recipe(data_dir)
    runtime = LLMRuntime.from_config(LLMConfig(threads=threads, device=device))
    projector, meta = load_projector(
        checkpoint, llm_hidden_size=runtime.hidden_size, llm=llm_identity("packaged"), encoder=ModelIdentity(**recipe["encoder"])
    )
    spec = meta["projector"]
    torch.manual_seed(0)  # serve's untrained projector: same kind, seeded with 0 (LLMDecoder._projector)
    untrained = build_projector(spec["kind"], spec["in_dim"], spec["out_dim"]).eval().to(device)
    projector = projector.to(device)

    held_out = eval_splits(data_dir)
    records = {split: [r for r in load_manifest(data_dir) if r.split == split][:limit] for split in held_out}
    examples = vision_examples(data_dir, held_out, seed=0, canonical_only=True)
    eos = set(runtime.eos_token_ids)
    figures: dict[str, dict] = {}
    for split in held_out:
        chosen = examples[split][:limit]
        drawn = all(r.scene is not None for r in records[split])
        scenes = [r.scene for r in records[split]] if drawn else None
        assert [ex.target for ex in chosen] == [r.caption for r in records[split]], "examples out of manifest order"
        figures[split] = {}
        for mode, module in (("trained", projector), ("untrained", untrained)):
            start = time.perf_counter()
            figs = caption_figures(runtime.model, runtime.tokenizer, eos, chosen, scenes, module)
            figs["seconds"] = round(time.perf_counter() - start, 1)
            figures[split][mode] = figs
            acc = figs.get("attribute_accuracy", {})
            print(
                f"{split:12s} {mode:9s} CE {figs['caption_ce']:.3f}  "
                + "  ".join(f"{k} {v * 100:.0f}%" for k, v in acc.items())
                + f"  ({figs['images']} images)",
                flush=True,
            )
    result = {"task": "caption", "instruction": CAPTION_INSTRUCTION, "decoding": "greedy", "splits": figures}
    if write_metadata:
        update_metadata(checkpoint, eval=result)
    if report:
        Path(report).write_text(json.dumps(result, indent=2))
    return result
