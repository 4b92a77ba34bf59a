"""OCR accuracy and speed on the held-out phone-photo set (bench/vision_set.py), per image and per kind.

`OcrRuntime().read(jpeg_bytes)` (modalities/vision/ocr.py, RapidOCR PP-OCRv4) on each of the 28
images; its text is compared with the printed ground-truth lines. Character accuracy = 1 - CER, CER
= character edit distance / ground-truth characters (`jiwer`), both sides normalised alike:

- layout-insensitive (the headline): lines joined with one space, whitespace runs collapsed, case
  kept. Errors in reading order (rows of side-by-side blocks interleaved) count here;
- no-space: all whitespace removed (dropped or added spaces do not count);
- order-insensitive: each printed cell (a run of text placed on its own: a row's label and its
  right-aligned amount are two cells) is matched to its best-matching span of the OCR text (any
  substring of the layout-normalised OCR text, so a box the detector split or merged with its
  neighbour still matches) and the edit distances are summed over cells. Text the OCR made up
  outside the matched spans does not count (a recall-like measure). Also in the JSON: the same per
  printed line (`order_insensitive_lines`, where a row's cells read apart cost), each line matched
  to its best single OCR line (`order_insensitive_best_line`, the strictest), and the cells with all
  whitespace removed (`order_insensitive_nospace`: what is left is misread characters alone).
  Layout vs order-insensitive shows what reading order (and made-up text) costs; order-insensitive
  vs its no-space form what spaces cost.

Per kind and overall: accuracy over all characters (errors summed, then divided) and the mean of the
per-image accuracies. Also: whether the item's `answer` (the printed code or amount asked about)
appears in the OCR text, whitespace-normalised ("answer readable"; also with all spaces removed);
OCR seconds per image (decode + three models; median, p90, per megapixel), and RapidOCR's own
detection / direction-classification / recognition split. One warm-up read is not counted.

    python -m bench.vision_ocr [--set DIR] [--out FILE] [--threads N]

Without --set the set is generated into a temporary directory (a DIR without manifest.json is
generated into). Writes --out (default bench/results/vision/ocr.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
from rapidfuzz.distance import Levenshtein

from bench.vision_set import KINDS, build_set, load_set
from modalities.vision.config import OcrConfig
from modalities.vision.ocr import OcrRuntime

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "vision" / "ocr.json"
TARGET_ACCURACY = 0.97
ORDER_VARIANTS = (("order_insensitive", "cells"), ("order_insensitive_nospace", "cells_nospace"),
                  ("order_insensitive_lines", "lines"), ("order_insensitive_best_line", "best_line"))


def layout_text(lines: list[str]) -> str:
    """Lines joined with one space, whitespace runs collapsed, case kept."""
    return " ".join(" ".join(lines).split())


def nospace_text(lines: list[str]) -> str:
    return "".join("".join(lines).split())


def char_errors(reference: str, hypothesis: str) -> dict[str, int]:
    """Edit operations turning `reference` into `hypothesis`, counted per character."""
    if not reference:
        return {"chars": 0, "errors": len(hypothesis), "substitutions": 0, "deletions": 0, "insertions": len(hypothesis)}
    if not hypothesis:
        return {"chars": len(reference), "errors": len(reference), "substitutions": 0, "deletions": len(reference),
                "insertions": 0}
    out = jiwer.process_characters(reference, hypothesis)
    errors = out.substitutions + out.deletions + out.insertions
    return {"chars": len(reference), "errors": errors, "substitutions": out.substitutions, "deletions": out.deletions,
            "insertions": out.insertions}


def _span_row(pattern: str, text: str, anchored: bool = False) -> np.ndarray:
    """Last row of the semi-global alignment of `pattern` against `text`: entry j is the smallest edit
    distance between `pattern` and a substring of `text` ending at j (starting at 0 if `anchored`)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    idx = np.arange(len(text) + 1)
    prev = idx.copy() if anchored else np.zeros(len(text) + 1, dtype=np.int64)  # free start unless anchored
    for i, ch in enumerate(pattern, 1):
        cur = np.empty_like(prev)
        cur[0] = i
        cur[1:] = np.minimum(prev[:-1] + (codes != ord(ch)), prev[1:] + 1)
        prev = np.minimum.accumulate(cur - idx) + idx  # insertions along text: cur[j] = min(cur[j], cur[j-1] + 1)
    return prev


def best_span_distance(pattern: str, text: str) -> int:
    """Smallest edit distance between `pattern` and any substring of `text` (semi-global alignment)."""
    if not pattern or not text:
        return len(pattern)
    return int(_span_row(pattern, text).min())


def best_span(pattern: str, text: str) -> str:
    """The substring of `text` closest to `pattern` by edit distance."""
    if not pattern or not text:
        return ""
    row = _span_row(pattern, text)
    end = len(row) - 1 - int(np.argmin(row[::-1]))  # on ties the longer span: a substitution, not a deletion
    back = _span_row(pattern[::-1], text[:end][::-1], anchored=True)
    start = end - (len(back) - 1 - int(np.argmin(back[::-1])))
    return text[start:end]


def confusions(gt_cells: list[list[str]], ocr_lines: list[str]) -> dict[str, dict[str, int]]:
    """What the OCR got wrong inside the text it found: each printed cell aligned with its best span of
    the OCR text; counts of substitutions ('truth>ocr'), deletions and insertions per character."""
    whole = layout_text(ocr_lines)
    subs: dict[str, int] = {}
    dels: dict[str, int] = {}
    ins: dict[str, int] = {}
    for cell in (" ".join(c.split()) for row in gt_cells for c in row):
        span = best_span(cell, whole).strip()  # cells never start or end with a space
        for op in Levenshtein.editops(cell, span):
            if op.tag == "replace":
                key = f"{cell[op.src_pos]}>{span[op.dest_pos]}"
                subs[key] = subs.get(key, 0) + 1
            elif op.tag == "delete":
                dels[cell[op.src_pos]] = dels.get(cell[op.src_pos], 0) + 1
            else:
                ins[span[op.dest_pos]] = ins.get(span[op.dest_pos], 0) + 1
    return {"substituted": subs, "deleted": dels, "inserted": ins}


def order_insensitive(gt_lines: list[str], gt_cells: list[list[str]], ocr_lines: list[str]) -> dict[str, Any]:
    """Character errors where the order of the OCR's lines does not count: each printed cell (a run of
    text placed on its own) matched to its best span of the OCR text; each printed line matched to its
    best span; each printed line matched to its best single OCR line."""
    ocr = [" ".join(line.split()) for line in ocr_lines if line.split()]
    whole = " ".join(ocr)
    lines = [" ".join(line.split()) for line in gt_lines if line.split()]
    cells = [" ".join(cell.split()) for row in gt_cells for cell in row if cell.split()]
    bare = ["".join(c.split()) for c in cells]
    whole_bare = "".join(whole.split())
    return {
        "cells": {"chars": sum(map(len, cells)), "errors": sum(best_span_distance(c, whole) for c in cells)},
        "cells_nospace": {"chars": sum(map(len, bare)), "errors": sum(best_span_distance(c, whole_bare) for c in bare)},
        "lines": {"chars": sum(map(len, lines)), "errors": sum(best_span_distance(line, whole) for line in lines)},
        "best_line": {"chars": sum(map(len, lines)),
                      "errors": sum(min([Levenshtein.distance(line, o) for o in ocr] or [len(line)]) for line in lines)},
    }


def answer_readable(answer: str, ocr_lines: list[str]) -> tuple[bool, bool]:
    """(answer in the OCR text with whitespace normalised, answer in it with all spaces removed)."""
    text = layout_text(ocr_lines)
    return layout_text([answer]) in text, nospace_text([answer]) in nospace_text(ocr_lines)


def _excerpt_diff(reference: str, hypothesis: str, limit: int = 6) -> list[dict[str, str]]:
    """The first few non-equal alignment chunks, ground truth vs OCR, with a little context."""
    if not reference or not hypothesis:
        return [{"type": "all", "truth": reference[:120], "ocr": hypothesis[:120]}]
    out = jiwer.process_characters(reference, hypothesis)
    chunks = []
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            continue
        r0, r1, h0, h1 = chunk.ref_start_idx, chunk.ref_end_idx, chunk.hyp_start_idx, chunk.hyp_end_idx
        chunks.append({"type": chunk.type, "truth": reference[max(0, r0 - 12):r1 + 12], "ocr": hypothesis[max(0, h0 - 12):h1 + 12],
                       "truth_chars": reference[r0:r1], "ocr_chars": hypothesis[h0:h1]})
        if len(chunks) >= limit:
            break
    return chunks


def measure_item(runtime: OcrRuntime, set_dir: Path, item: dict[str, Any]) -> dict[str, Any]:
    data = (set_dir / item["file"]).read_bytes()
    result = runtime.read(data)
    ocr_lines = [line.text for line in result.lines]
    gt = item["lines"]
    ref_layout, hyp_layout = layout_text(gt), layout_text(ocr_lines)
    layout = char_errors(ref_layout, hyp_layout)
    nospace = char_errors(nospace_text(gt), nospace_text(ocr_lines))
    order = order_insensitive(gt, item.get("cells") or [[line] for line in gt], ocr_lines)
    readable, readable_nospace = answer_readable(item["answer"], ocr_lines)
    megapixels = result.width * result.height / 1e6
    return {
        "id": item["id"], "kind": item["kind"], "size": [result.width, result.height], "megapixels": round(megapixels, 2),
        "layout": {**layout, "accuracy": 1 - layout["errors"] / layout["chars"]},
        "nospace": {**nospace, "accuracy": 1 - nospace["errors"] / nospace["chars"]},
        **{name: {**order[key], "accuracy": 1 - order[key]["errors"] / order[key]["chars"]} for name, key in ORDER_VARIANTS},
        "question": item["question"], "answer": item["answer"],
        "answer_readable": readable, "answer_readable_nospace": readable_nospace,
        "seconds": result.seconds, "seconds_per_mp": result.seconds / megapixels, "timings": result.timings,
        "lines_read": len(ocr_lines), "lines_truth": len(gt),
        "mean_confidence": statistics.fmean([line.confidence for line in result.lines]) if result.lines else None,
        "distortions": item["distortions"],
        "first_differences": _excerpt_diff(ref_layout, hyp_layout),
        "confusions": confusions(item.get("cells") or [[line] for line in gt], ocr_lines),
        "ocr_lines": ocr_lines,
    }


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"images": len(rows)}
    for name in ("layout", "nospace", *(name for name, _ in ORDER_VARIANTS)):
        chars = sum(r[name]["chars"] for r in rows)
        errors = sum(r[name]["errors"] for r in rows)
        out[name] = {"accuracy": 1 - errors / chars, "mean_image_accuracy": statistics.fmean(r[name]["accuracy"] for r in rows),
                     "worst_image_accuracy": min(r[name]["accuracy"] for r in rows), "chars": chars, "errors": errors}
    out["layout"].update({k: sum(r["layout"][k] for r in rows) for k in ("substitutions", "deletions", "insertions")})
    top: dict[str, Any] = {}
    for part in ("substituted", "deleted", "inserted"):
        counts: dict[str, int] = {}
        for r in rows:
            for key, n in r["confusions"][part].items():
                counts[key] = counts.get(key, 0) + n
        top[part] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:15])
        top[f"{part}_total"] = sum(counts.values())
    out["confusions"] = top
    out["answer_readable"] = sum(r["answer_readable"] for r in rows) / len(rows)
    out["answer_readable_nospace"] = sum(r["answer_readable_nospace"] for r in rows) / len(rows)
    seconds = [r["seconds"] for r in rows]
    out["seconds"] = {"median": statistics.median(seconds), "p90": _p90(seconds), "max": max(seconds),
                      "per_mp_median": statistics.median(r["seconds_per_mp"] for r in rows)}
    stages = {k: sum(r["timings"].get(k, 0.0) for r in rows) for k in ("detection_s", "classification_s", "recognition_s")}
    total = sum(seconds)
    out["stage_share"] = {k.removesuffix("_s"): v / total for k, v in stages.items()}
    out["stage_share"]["decode_and_other"] = 1 - sum(stages.values()) / total
    return out


def evaluate(set_dir: Path, threads: int | None) -> dict[str, Any]:
    items = load_set(set_dir)
    runtime = OcrRuntime(OcrConfig(threads=threads))
    runtime.read((set_dir / items[0]["file"]).read_bytes())  # warm-up: ONNX Runtime's first-run allocations
    rows = []
    for item in items:
        row = measure_item(runtime, set_dir, item)
        rows.append(row)
        print(f"  {row['id']:11s} layout {row['layout']['accuracy']:6.1%}  no-space {row['nospace']['accuracy']:6.1%}  "
              f"order-insens. {row['order_insensitive']['accuracy']:6.1%}  answer {'yes' if row['answer_readable'] else 'NO '}  "
              f"{row['seconds']:5.2f} s", flush=True)
    summary = {"all": summarize(rows)}
    for kind in KINDS:
        summary[kind] = summarize([r for r in rows if r["kind"] == kind])
    summary["not turned"] = summarize([r for r in rows if not r["distortions"].get("turned")])  # all but the 90/180
    worst = sorted(rows, key=lambda r: r["layout"]["accuracy"])[:3]
    return {
        "set": str(set_dir), "ocr": {"engine": "rapidocr-onnxruntime (PP-OCRv4)", "threads": runtime.config.threads or 1,
                                     "max_side": runtime.config.max_side, "min_confidence": runtime.config.min_confidence},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "target_accuracy": TARGET_ACCURACY, "summary": summary, "worst_layout": [r["id"] for r in worst], "images": rows,
    }


def table(summary: dict[str, Any]) -> str:
    head = (f"{'kind':10s} {'imgs':>4s} {'layout':>8s} {'no-space':>9s} {'order-ins':>9s} {'o-i nosp':>9s} {'bestline':>8s} {'answer':>7s} "
            f"{'ans(nosp)':>9s} {'t med s':>8s} {'t p90 s':>8s} {'s/MP':>6s}")
    rows = [head, "-" * len(head)]
    for kind, s in summary.items():
        rows.append(f"{kind:10s} {s['images']:4d} {s['layout']['accuracy']:8.1%} {s['nospace']['accuracy']:9.1%} "
                    f"{s['order_insensitive']['accuracy']:9.1%} {s['order_insensitive_nospace']['accuracy']:9.1%} {s['order_insensitive_best_line']['accuracy']:8.1%} "
                    f"{s['answer_readable']:7.0%} {s['answer_readable_nospace']:9.0%} {s['seconds']['median']:8.2f} "
                    f"{s['seconds']['p90']:8.2f} {s['seconds']['per_mp_median']:6.2f}")
    share = summary["all"]["stage_share"]
    rows.append("time split (all): " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, help="a set written by bench.vision_set (default: generate one in a temp dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vision-set-") as tmp:
        set_dir = args.set or Path(tmp)
        if not (set_dir / "manifest.json").exists():
            print(f"generating the set into {set_dir} ...", flush=True)
            build_set(set_dir)
        results = evaluate(set_dir, args.threads)
    if args.set is None:
        results["set"] = "generated (python -m bench.vision_set)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print()
    print(table(results["summary"]))
    print(f"\nworst (layout-insensitive): {', '.join(results['worst_layout'])}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
