"""Transcribe the sample clips (samples/audio/*.wav) with the packaged Whisper base, the service's own
runtime and defaults, and print each clip's word error rate against the sentence it speaks (its .txt).

    .venv/bin/python samples/check_samples.py               # the clips in the working tree
    .venv/bin/python samples/check_samples.py --against HEAD  # also the clips committed at a git revision

Both sides are normalised as bench/whisper_window.py does (lower case, punctuation and apostrophes
stripped). Exits 1 when a clip is not transcribed word for word (WER above 0).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import jiwer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench.whisper_window import normalize  # noqa: E402
from modalities.audio.whisper import WhisperConfig, WhisperRuntime  # noqa: E402


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(normalize(reference), normalize(hypothesis) or "<nothing>")


def committed(rev: str, path: Path) -> bytes | None:
    rel = path.relative_to(REPO).as_posix()
    run = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{rel}"], capture_output=True, check=False)
    return run.stdout if run.returncode == 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also transcribe the clips as committed at this git revision")
    args = parser.parse_args()

    runtime = WhisperRuntime.from_config(WhisperConfig(model="packaged", device="cpu"))
    rows, worst = [], 0.0
    for wav in sorted((HERE / "audio").glob("*.wav")):
        sentence = wav.with_suffix(".txt").read_text().strip()
        audio = runtime.decode(wav.read_bytes())
        heard = runtime.transcribe(audio).text.strip()
        score = wer(sentence, heard)
        worst = max(worst, score)
        row = {"clip": wav.stem, "seconds": len(audio) / 16_000, "sentence": sentence, "heard": heard, "wer": score}
        if args.against:
            old = committed(args.against, wav)
            old_heard = runtime.transcribe(runtime.decode(old)).text.strip() if old else None
            row["old"] = old_heard
            old_txt = committed(args.against, wav.with_suffix(".txt"))
            old_sentence = old_txt.decode().strip() if old_txt else sentence
            row["old_wer"] = wer(old_sentence, old_heard) if old_heard is not None else None
        rows.append(row)

    if args.against:
        print(f"| clip | s | sentence | {args.against} transcript | WER | transcript now | WER |")
        print("|---|---|---|---|---|---|---|")
    else:
        print("| clip | s | sentence | transcript | WER |")
        print("|---|---|---|---|---|")
    for r in rows:
        cells = [r["clip"], f"{r['seconds']:.1f}", r["sentence"]]
        if args.against:
            old_wer = "-" if r["old_wer"] is None else f"{100 * r['old_wer']:.0f} %"
            cells += [r["old"] or "(none)", old_wer]
        cells += [r["heard"], f"{100 * r['wer']:.0f} %"]
        print("| " + " | ".join(cells) + " |")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
