"""Answer agreement: does the LLM answer a spoken request the same way whichever way it hears it?

The "answer the request" task: the caller's clip is the whole user turn (no instruction), and the LLM
answers it as the assistant. For each held-out clip we generate (greedy, same budget):

- `reference`: the answer to the *true sentence as text* — what a perfect ear would give;
- `transcript`: the answer with Whisper's transcript inserted as text (the cascade);
- `embed`: the answer from the trained projector's soft tokens;
- `untrained`: the answer from serve's seed-0 untrained projector (the floor).

Agreement between two answers is the word-level F1 of their normalized words (SQuAD's answer F1:
order-free overlap, 1.0 for identical answers), averaged over clips, plus the exact-match rate.
`embed` vs `transcript` is the figure the issue asks for; each against `reference` says which mode
is closer to what the caller actually said.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fusion.evaluate import (
    AUDIO_INDEX,
    cache_mode,
    cached_outputs,
    greedy_texts,
    load_eval_inputs,
    normalize,
    plan_embeds,
)
from fusion.prompt import MediaItem, Message, build_prompt

ANSWER_MAX_NEW_TOKENS = 48
MODES = ("reference", "transcript", "embed", "untrained")
PAIRS = (("embed", "transcript"), ("embed", "reference"), ("transcript", "reference"), ("untrained", "reference"))


def word_f1(a: str, b: str) -> float:
    """Order-free word overlap F1 of two texts after `normalize` (1.0 when both are empty)."""
    wa, wb = normalize(a), normalize(b)
    if not wa and not wb:
        return 1.0
    common = sum((Counter(wa) & Counter(wb)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(wa), common / len(wb)
    return 2 * precision * recall / (precision + recall)


def agreement(first: Sequence[str], second: Sequence[str]) -> dict[str, float]:
    """Mean word F1 and exact-match rate (normalized words equal) over paired answers."""
    assert len(first) == len(second) and first, (len(first), len(second))
    f1 = sum(word_f1(a, b) for a, b in zip(first, second)) / len(first)
    exact = sum(normalize(a) == normalize(b) for a, b in zip(first, second)) / len(first)
    return {"word_f1": round(f1, 4), "exact": round(exact, 4)}


def request_embeds(
    model: nn.Module,
    tokenizer,
    mode: str,
    *,
    text: str | None = None,
    projector: nn.Module | None = None,
    features: torch.Tensor | None = None,
    transcript: str | None = None,
) -> torch.Tensor:
    """`[L, H]` prompt whose user turn is just the request: `text`, or the clip in `mode`."""
    if text is not None:
        messages = [Message("user", [text])]
        mode = "transcript"
    else:
        messages = [Message("user", [MediaItem("audio", AUDIO_INDEX, transcript)])]
    return plan_embeds(model, build_prompt(messages, tokenizer, mode), projector, features)


def evaluate_agreement_cli(
    checkpoint: str, data_dir: str, limit: int, threads: int, report: str | None = None, write_metadata: bool = False
) -> dict:
    """`chorus eval-agreement`: answers in each mode on the held-out splits, pairwise agreement."""
    from fusion.checkpoint import update_metadata
    from fusion.speech_data import EVAL_SPLITS

    root = Path(data_dir).expanduser()
    inputs = load_eval_inputs(checkpoint, root, limit, threads, engine="eager")
    runtime, projector, untrained, floor = inputs.runtime, inputs.projector, inputs.untrained, inputs.untrained_spec
    model, tokenizer = runtime.model, runtime.tokenizer
    by_split, features, transcripts = inputs.by_split, inputs.features, inputs.transcripts
    eos = set(runtime.eos_token_ids)

    figures: dict[str, dict] = {}
    for split, group in by_split.items():
        start = time.perf_counter()
        prompts = {
            "reference": lambda cs: [request_embeds(model, tokenizer, "transcript", text=c.text) for c in cs],
            "transcript": lambda cs: [request_embeds(model, tokenizer, "transcript", transcript=transcripts[c.id]) for c in cs],
            "embed": lambda cs: [request_embeds(model, tokenizer, "embed", projector=projector, features=features[c.id]) for c in cs],
            "untrained": lambda cs: [request_embeds(model, tokenizer, "embed", projector=untrained, features=features[c.id]) for c in cs],
        }

        def answers(chosen, mode, prompts=prompts):
            return greedy_texts(model, tokenizer, eos, prompts[mode](chosen), ANSWER_MAX_NEW_TOKENS)

        # Only `embed` depends on the checkpoint: the other modes' answers are cached in the corpus.
        out = {
            mode: answers(group, mode) if mode == "embed" else cached_outputs(root, "answer", cache_mode(mode, floor), group, lambda cs, m=mode: answers(cs, m))
            for mode in MODES
        }
        figures[split] = {
            "clips": len(group),
            "seconds": round(time.perf_counter() - start, 1),
            **{f"{a}_vs_{b}": agreement(out[a], out[b]) for a, b in PAIRS},
            "samples": [
                {"request": c.text, **{mode: out[mode][i] for mode in MODES}} for i, c in enumerate(group[:2])
            ],
            # each pair's word F1 per clip: what `chorus compare-projectors` pairs up
            "per_clip": {
                c.id: {f"{a}_vs_{b}": round(word_f1(out[a][i], out[b][i]), 4) for a, b in PAIRS} for i, c in enumerate(group)
            },
        }
        line = "  ".join(f"{a}/{b} F1 {figures[split][f'{a}_vs_{b}']['word_f1']:.2f}" for a, b in PAIRS)
        print(f"{split:15s} {line}  ({len(group)} clips)", flush=True)

    pairs = [f"{a}_vs_{b}" for a, b in PAIRS]
    table = ["| split | " + " | ".join(p.replace("_vs_", " vs ") for p in pairs) + " |", "|---" * (len(pairs) + 1) + "|"]
    for split in EVAL_SPLITS:
        cells = [f"{figures[split][p]['word_f1']:.2f} ({figures[split][p]['exact'] * 100:.0f} %)" for p in pairs]
        table.append(f"| {split} | " + " | ".join(cells) + " |")
    print("\n".join(table))
    result = {
        "task": "answer",
        "metric": "mean word F1 between answers (exact-match rate in brackets)",
        "decoding": f"greedy, {ANSWER_MAX_NEW_TOKENS} new tokens",
        "splits": figures,
    }
    if write_metadata:
        update_metadata(checkpoint, answer_agreement=result)
    if report:
        Path(report).write_text(json.dumps(result, indent=2))
    return result
