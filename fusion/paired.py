"""Paired comparison of two projector evaluations on the same held-out clips.

Sixty clips a split are about 600 words: two projectors' WERs a few points apart may differ by one
garbled sentence. Both evaluations score the very same clips, so the comparison is paired: per clip,
the two scores are set side by side, and a paired bootstrap (clips resampled with replacement, the
same draw for both) gives a 95 % interval of the difference; clips each one does better on are
counted too. Reports come from `chorus eval-projector --report` (task `repeat`: per-clip word errors
of a mode) or its `.agreement.json` (task `answer`: per-clip word F1 of a mode pair).

`compare_reports` is what `chorus compare-projectors` prints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """`first - second` of a ratio statistic Σvalue / Σweight over the shared clips."""

    clips: int
    first: float
    second: float
    difference: float
    low: float  # the bootstrap interval of `difference`
    high: float
    first_better: int  # clips on which the first scores better (see `lower_is_better`)
    second_better: int

    @property
    def decided(self) -> bool:
        """The interval excludes 0: the sign of the difference holds across resampled clip sets."""
        return self.low > 0 or self.high < 0


def paired_difference(
    first: Sequence[float],
    second: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    lower_is_better: bool,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> PairedDifference:
    """Compare two per-clip score lists (same clips, same order). The statistic is Σscore / Σweight
    (weights: words per clip for WER's errors; 1 each for a mean), as the corpus figure is."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64)
    if not (a.shape == b.shape == w.shape) or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equally long, non-empty score lists (got {a.shape}, {b.shape}, weights {w.shape})")
    if w.sum() <= 0:
        raise ValueError("the weights sum to zero")
    draws = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    totals = w[draws].sum(axis=1)
    diffs = (a[draws].sum(axis=1) - b[draws].sum(axis=1)) / np.where(totals > 0, totals, 1.0)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    per_clip_gain = (a - b) / np.where(w > 0, w, 1.0) * (-1 if lower_is_better else 1)  # > 0: the first does better
    return PairedDifference(
        clips=int(a.size),
        first=float(a.sum() / w.sum()),
        second=float(b.sum() / w.sum()),
        difference=float((a.sum() - b.sum()) / w.sum()),
        low=float(low),
        high=float(high),
        first_better=int((per_clip_gain > 0).sum()),
        second_better=int((per_clip_gain < 0).sum()),
    )


def _per_clip(report: dict, split: str, key: str) -> dict[str, list[float]]:
    """clip id → [score, weight] of `key` (a mode of a repeat report, a pair of an answer report)."""
    figures = report["splits"][split]
    if report["task"] == "repeat":
        if "per_clip" not in figures.get(key, {}):
            raise ValueError(f"the report has no per-clip errors for mode {key!r} on {split} (measured before they were kept?)")
        return {clip: [errors, words] for clip, (errors, words) in figures[key]["per_clip"].items()}
    if "per_clip" not in figures:
        raise ValueError(f"the report has no per-clip F1 on {split} (measured before they were kept?)")
    if any(key not in pairs for pairs in figures["per_clip"].values()):
        raise ValueError(f"the report has no pair {key!r} on {split} (pairs: {sorted(next(iter(figures['per_clip'].values())))})")
    return {clip: [pairs[key], 1.0] for clip, pairs in figures["per_clip"].items()}


def compare_reports(first: dict, second: dict, key: str | None = None, seed: int = 0) -> dict:
    """Per split, the paired difference of `first` and `second` (two reports of one task) on the
    clips both scored: repeat WER of mode `key` (default `embed`), or the word F1 of pair `key`
    (default `embed_vs_reference`)."""
    task = first.get("task")
    if task not in ("repeat", "answer") or second.get("task") != task:
        raise ValueError(f"need two reports of one task, repeat or answer (got {task!r} and {second.get('task')!r})")
    key = key or ("embed" if task == "repeat" else "embed_vs_reference")
    out: dict[str, dict] = {}
    for split in first["splits"]:
        if split not in second["splits"]:
            continue
        a, b = _per_clip(first, split, key), _per_clip(second, split, key)
        shared = sorted(set(a) & set(b))
        if not shared:
            raise ValueError(f"the reports share no clips on {split}")
        weights = [a[c][1] for c in shared]
        if any(a[c][1] != b[c][1] for c in shared):
            raise ValueError(f"the reports' clips differ in length on {split}: not the same corpus build")
        result = paired_difference(
            [a[c][0] for c in shared], [b[c][0] for c in shared], weights, lower_is_better=task == "repeat", seed=seed
        )
        out[split] = {**asdict(result), "decided": result.decided}
    return {"task": task, "key": key, "confidence": CONFIDENCE, "resamples": RESAMPLES, "splits": out}


def format_comparison(result: dict, names: tuple[str, str]) -> str:
    """The comparison as a Markdown table (WER in %, F1 as is)."""
    wer = result["task"] == "repeat"

    def cell(v: float, sign: str = "") -> str:
        return f"{v * 100:{sign}.1f} %" if wer else f"{v:{sign}.3f}"
    metric = "repeat WER" if wer else "word F1"
    a, b = names
    rows = [
        f"{metric} ({result['key']}), paired bootstrap {result['confidence']:.0%} interval",
        f"| split | clips | {a} | {b} | difference | interval | clips {a} better | clips {b} better |",
        "|---" * 8 + "|",
    ]
    for split, r in result["splits"].items():
        mark = "" if r["decided"] else " (undecided)"
        rows.append(
            f"| {split} | {r['clips']} | {cell(r['first'])} | {cell(r['second'])} | {cell(r['difference'], '+')}{mark} "
            f"| {cell(r['low'], '+')} … {cell(r['high'], '+')} | {r['first_better']} | {r['second_better']} |"
        )
    return "\n".join(rows)


def compare_cli(first: str, second: str, key: str | None = None, report: str | None = None) -> dict:
    """`chorus compare-projectors FIRST SECOND`: print the paired comparison; optionally save it."""
    result = compare_reports(json.loads(Path(first).read_text()), json.loads(Path(second).read_text()), key)
    result["reports"] = [first, second]
    print(format_comparison(result, (Path(first).stem, Path(second).stem)))
    if report:
        Path(report).write_text(json.dumps(result, indent=2))
    return result
