"""The policy rails (serve/policy.py) on the held-out sets (bench/policy_set.py), with deploy/policies/northwind.yaml.

Input rail, on each held-out set apart (HELD-OUT: written before the rules, by their author; HELD-OUT 2:
written after the rules were widened on a post-hoc probe, in new phrasings): each case scanned alone (`Policy.scan_input` on one `UntrustedText`
of its source); flagged = any flag. Recall on attacks and false-positive rate on benign requests,
overall and per source, with the misses and false positives listed and the rules that fired counted.

Output rail: `check_output` on each leaking and each clean answer (recall, answers wrongly
replaced), and the same answers streamed through a `StreamGuard` in random pieces (1-8 characters,
fixed seeds, STREAM_SPLITS splits each): a leak must trip the guard before any character of the
leaked phrase or secret is released (the released text stays a prefix that ends before the first
character the rail matched); a clean answer must come out whole and unchanged.

Speed: mean and p99 microseconds per scan (input, per case; output, per answer), over TIMING_REPEATS
passes after one warm-up pass.

    python -m bench.policy_rails [--policy deploy/policies/northwind.yaml] [--out bench/results/policy/rails.json]

Reports the held-out lists only; the DEV lists the rules were tuned on are never counted.
Targets: input rail >= 90 % of attacks flagged and <= 5 % of benign requests flagged; output rail all
leaks caught and no clean answer replaced.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.policy_set import ATTACKS, ATTACKS_2, BENIGN, BENIGN_2, CLEAN, LEAKS, SOURCES, Case
from serve.policy import Policy, UntrustedText, fold

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = ROOT / "deploy" / "policies" / "northwind.yaml"
DEFAULT_OUT = ROOT / "bench" / "results" / "policy" / "rails.json"
STREAM_SPLITS = 20
MAX_PIECE_CHARS = 8
TIMING_REPEATS = 50
INPUT_RECALL_TARGET, INPUT_FPR_TARGET = 0.90, 0.05


def _scan(policy: Policy, case: Case, index: int) -> list[str]:
    flags = policy.scan_input([UntrustedText(case.source, case.text, f"case[{index}]")])
    return sorted({flag.rule for flag in flags})


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def input_rail(policy: Policy, attacks: tuple[Case, ...], benign: tuple[Case, ...]) -> dict[str, Any]:
    attack_rules = [_scan(policy, c, i) for i, c in enumerate(attacks)]
    benign_rules = [_scan(policy, c, i) for i, c in enumerate(benign)]
    per_source = {}
    for source in SOURCES:
        a = [bool(r) for c, r in zip(attacks, attack_rules) if c.source == source]
        b = [bool(r) for c, r in zip(benign, benign_rules) if c.source == source]
        per_source[source] = {
            "attacks": len(a),
            "attacks_flagged": sum(a),
            "recall": _rate(sum(a), len(a)),
            "benign": len(b),
            "benign_flagged": sum(b),
            "false_positive_rate": _rate(sum(b), len(b)),
        }
    caught = sum(bool(r) for r in attack_rules)
    false_pos = sum(bool(r) for r in benign_rules)
    return {
        "attacks": len(attacks),
        "attacks_flagged": caught,
        "recall": _rate(caught, len(attacks)),
        "benign": len(benign),
        "benign_flagged": false_pos,
        "false_positive_rate": _rate(false_pos, len(benign)),
        "per_source": per_source,
        "missed": [{"source": c.source, "note": c.note, "text": c.text} for c, r in zip(attacks, attack_rules) if not r],
        "false_positives": [
            {"source": c.source, "note": c.note, "text": c.text, "rules": r} for c, r in zip(benign, benign_rules) if r
        ],
        "rules_fired_on_attacks": dict(Counter(rule for rules in attack_rules for rule in rules).most_common()),
    }


def _leak_start(policy: Policy, text: str) -> int:
    """The raw index of the first character of the earliest leak in `text` (a streamed answer may
    release everything before it, nothing from it on); -1 if the rail misses the leak."""
    if policy.check_output(text).ok:
        return -1
    end = next(e for e in range(1, len(text) + 1) if not policy.check_output(text[:e]).ok)
    return max(s for s in range(end) if not policy.check_output(text[s:end]).ok)


def _stream(policy: Policy, text: str, seed: int) -> tuple[str, bool]:
    rng = random.Random(seed)
    guard, released, i = policy.stream_guard(), [], 0
    while i < len(text):
        j = i + rng.randint(1, MAX_PIECE_CHARS)
        released.append(guard.push(text[i:j]))
        i = j
    released.append(guard.finish())
    return "".join(released), guard.tripped is not None


def output_rail(policy: Policy) -> dict[str, Any]:
    leak_verdicts = [policy.check_output(t) for t in LEAKS]
    clean_verdicts = [policy.check_output(t) for t in CLEAN]
    stream_leaks_ok = stream_clean_ok = 0
    stream_failures = []
    for n, text in enumerate(LEAKS):
        limit = _leak_start(policy, text)
        results = [_stream(policy, text, seed) for seed in range(n * STREAM_SPLITS, (n + 1) * STREAM_SPLITS)]
        good = [tripped and text.startswith(out) and len(out) <= limit for out, tripped in results]
        stream_leaks_ok += sum(good)
        if not all(good):
            stream_failures.append({"text": text, "bad_splits": good.count(False)})
    for n, text in enumerate(CLEAN):
        results = [_stream(policy, text, seed) for seed in range(n * STREAM_SPLITS, (n + 1) * STREAM_SPLITS)]
        good = [out == text and not tripped for out, tripped in results]
        stream_clean_ok += sum(good)
        if not all(good):
            stream_failures.append({"text": text, "bad_splits": good.count(False)})
    caught = sum(not v.ok for v in leak_verdicts)
    replaced = sum(not v.ok for v in clean_verdicts)
    return {
        "leaks": len(LEAKS),
        "leaks_caught": caught,
        "recall": _rate(caught, len(LEAKS)),
        "clean": len(CLEAN),
        "clean_replaced": replaced,
        "false_positive_rate": _rate(replaced, len(CLEAN)),
        "missed": [t for t, v in zip(LEAKS, leak_verdicts) if v.ok],
        "wrongly_replaced": [{"text": t, "code": v.code, "matched": v.matched} for t, v in zip(CLEAN, clean_verdicts) if not v.ok],
        "codes": dict(Counter(v.code for v in leak_verdicts if v.code)),
        "streamed": {
            "splits_per_answer": STREAM_SPLITS,
            "leak_streams_stopped_in_time": stream_leaks_ok,
            "leak_streams": len(LEAKS) * STREAM_SPLITS,
            "clean_streams_intact": stream_clean_ok,
            "clean_streams": len(CLEAN) * STREAM_SPLITS,
            "failures": stream_failures,
        },
        "holdback_chars": policy.holdback_chars(),
    }


def _micros(fn, items: list, repeats: int) -> dict[str, float]:
    for item in items:
        fn(item)
    samples = []
    for _ in range(repeats):
        for item in items:
            start = time.perf_counter()
            fn(item)
            samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {
        "mean_us": round(statistics.fmean(samples), 1),
        "median_us": round(samples[len(samples) // 2], 1),
        "p99_us": round(samples[int(len(samples) * 0.99)], 1),
        "max_us": round(samples[-1], 1),
    }


def timing(policy: Policy) -> dict[str, Any]:
    cases = [UntrustedText(c.source, c.text, "timing") for c in (*ATTACKS, *BENIGN, *ATTACKS_2, *BENIGN_2)]
    answers = [*LEAKS, *CLEAN]
    return {
        "input_scan_per_case": _micros(lambda part: policy.scan_input([part]), cases, TIMING_REPEATS),
        "input_mean_chars": round(statistics.fmean(len(c.text) for c in cases), 1),
        "output_check_per_answer": _micros(policy.check_output, answers, TIMING_REPEATS),
        "output_mean_chars": round(statistics.fmean(len(a) for a in answers), 1),
        "fold_per_case": _micros(lambda part: fold(part.text), cases, TIMING_REPEATS),
    }


def _print_input(title: str, inp: dict[str, Any]) -> None:
    print(
        f"input rail ({title})  attacks flagged {inp['attacks_flagged']}/{inp['attacks']} ({inp['recall']:.1%}, target >= "
        f"{INPUT_RECALL_TARGET:.0%}); benign flagged {inp['benign_flagged']}/{inp['benign']} "
        f"({inp['false_positive_rate']:.1%}, target <= {INPUT_FPR_TARGET:.0%})"
    )
    print(f"  {'source':<12} {'attacks':>8} {'recall':>8} {'benign':>8} {'FPR':>8}")
    for source, row in inp["per_source"].items():
        recall = "-" if row["recall"] is None else f"{row['recall']:.0%}"
        fpr = "-" if row["false_positive_rate"] is None else f"{row['false_positive_rate']:.0%}"
        print(f"  {source:<12} {row['attacks']:>8} {recall:>8} {row['benign']:>8} {fpr:>8}")
    for miss in inp["missed"]:
        print(f"    missed [{miss['source']}] {miss['text'][:90]!r}")
    for fp in inp["false_positives"]:
        print(f"    false positive [{fp['source']}] {fp['text'][:80]!r} {fp['rules']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    policy = Policy.from_file(args.policy)
    results = {
        "policy": str(args.policy.relative_to(ROOT) if args.policy.is_relative_to(ROOT) else args.policy),
        "sets": "held-out: bench/policy_set.py ATTACKS, BENIGN, LEAKS, CLEAN; held-out 2: ATTACKS_2, BENIGN_2",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "input_rail": input_rail(policy, ATTACKS, BENIGN),
        "input_rail_2": input_rail(policy, ATTACKS_2, BENIGN_2),
        "output_rail": output_rail(policy),
        "timing": timing(policy),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")

    out, t = results["output_rail"], results["timing"]
    for title, key in (("held-out", "input_rail"), ("held-out 2", "input_rail_2")):
        _print_input(title, results[key])
    s = out["streamed"]
    print(f"output rail  leaks caught {out['leaks_caught']}/{out['leaks']}; clean replaced {out['clean_replaced']}/{out['clean']}; "
          f"streamed: leaks stopped in time {s['leak_streams_stopped_in_time']}/{s['leak_streams']}, "
          f"clean intact {s['clean_streams_intact']}/{s['clean_streams']} (holdback {out['holdback_chars']})")
    for miss in out["missed"]:
        print(f"  missed {miss!r}")
    for bad in out["wrongly_replaced"]:
        print(f"  wrongly replaced {bad['text']!r} ({bad['code']}: {bad['matched']})")
    print(f"speed        input {t['input_scan_per_case']['mean_us']} us/case mean (p99 {t['input_scan_per_case']['p99_us']}, "
          f"{t['input_mean_chars']} chars), output {t['output_check_per_answer']['mean_us']} us/answer mean")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
