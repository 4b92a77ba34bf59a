"""Every speech synthesizer that installs here, behind one call: `speak(voice, text, speed)` → 16 kHz.

The speech corpus (`fusion.speech_data`) draws each clip's voice from these. Four engines, four ways
of making speech, so that a projector trained on some and evaluated on another has to carry the words
rather than one engine's signature:

- **espeak-ng** (formant synthesis; accents × variants, pitch) — Debian `espeak-ng`;
- **flite** (CMU's small engine: clustergen voices awb and rms) — Debian `flite`;
- **festival** (diphone voices kal and ked, the HTS voice slt) — Debian `festival`, `festvox-*`;
- **hibari** (a neural voice distilled from Kokoro; only "heart" is offline) — PyPI `hibari-tts`.

flite also ships kal and slt, the same recorded speakers as festival's; they are left out so that the
held-out synthesizer (festival, `HELDOUT_SYNTH`) shares neither engine nor speaker with training.
MBROLA voices would be a fifth engine, but Debian keeps them in non-free, which these machines do not
install from.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from modalities.audio.decode import resample

SYNTH_TIMEOUT_S = 60
# espeak-ng 1.51 ignores a variant after "en-gb" (every "en-gb+…" name is one voice; "en+m1" would
# differ): 13 of the 104 names below sound alike. Kept as built (corpus v2 records these names).
ESPEAK_BASES: tuple[str, ...] = (
    "en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-029", "en-gb-scotland", "en-us-nyc", "en-gb-x-gbcwmd",
)
ESPEAK_VARIANTS: tuple[str, ...] = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f5", "+klatt")
FLITE_VOICES: tuple[str, ...] = ("awb", "rms")
FESTIVAL_VOICES: tuple[str, ...] = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
HIBARI_VOICES: tuple[str, ...] = ("heart",)
SYNTHS: dict[str, tuple[str, ...]] = {
    "espeak": tuple(base + variant for base in ESPEAK_BASES for variant in ESPEAK_VARIANTS),
    "flite": FLITE_VOICES,
    "festival": FESTIVAL_VOICES,
    "hibari": HIBARI_VOICES,
}
HELDOUT_SYNTH = "festival"
TRAIN_SYNTHS: tuple[str, ...] = tuple(name for name in SYNTHS if name != HELDOUT_SYNTH)
# How often each training synthesizer speaks a clip: espeak has 104 voices, the others 1-2, so an
# even share per engine keeps the neural and concatenative voices from being drowned out.
TRAIN_SYNTH_WEIGHTS: dict[str, float] = {"espeak": 0.4, "flite": 0.3, "hibari": 0.3}
SPEED_RANGE = (0.8, 1.25)  # speaking-rate factor, each engine's own control
PITCH_RANGE = (25, 75)  # espeak-ng only


@dataclass(frozen=True)
class Voice:
    synth: str
    name: str

    def __str__(self) -> str:
        return f"{self.synth}:{self.name}"


def missing() -> list[str]:
    """Synthesizers that are not installed (what `make-speech-data` would fail on)."""
    out = [name for name, exe in (("espeak", "espeak-ng"), ("flite", "flite"), ("festival", "text2wave")) if not shutil.which(exe)]
    try:
        import hibari  # noqa: F401
    except ImportError:
        out.append("hibari")
    return out


def _run(cmd: list[str], stdin: bytes | None = None) -> None:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=SYNTH_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace').strip()[:300]}")


def _read(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    if audio.size == 0:
        raise RuntimeError(f"the synthesizer wrote no audio to {path.name}")
    return resample(audio.mean(axis=1), rate)


def _flite(voice: str, text: str, speed: float) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        text_file, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        text_file.write_text(text)
        _run(["flite", "-voice", voice, "--setf", f"duration_stretch={1 / speed:.3f}", "-f", str(text_file), "-o", str(wav)])
        return _read(wav)


def _festival(voice: str, text: str, speed: float) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        text_file, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        text_file.write_text(text)
        # Diphone voices take Duration_Stretch; the HTS voice ignores it and takes hts_engine's "-r" rate.
        rate = f'(set! hts_engine_params (cons (list "-r" {speed:.3f}) hts_engine_params))' if voice.endswith("_hts") else (
            f"(Parameter.set 'Duration_Stretch {1 / speed:.3f})"
        )
        _run(["text2wave", "-o", str(wav), "-eval", f"(voice_{voice})", "-eval", rate, str(text_file)])
        return _read(wav)


_hibari = None


def _hibari_speak(voice: str, text: str, speed: float) -> np.ndarray:
    global _hibari
    from modalities.speech.tts import OUTPUT_RATE, HibariEngine

    if _hibari is None:
        _hibari = HibariEngine(threads=1, seed=0)
    return resample(_hibari.synthesize(text, voice, speed), OUTPUT_RATE)


def speak(voice: Voice, text: str, speed: float = 1.0, pitch: int = 50) -> np.ndarray:
    """`text` spoken by `voice` at `speed` (1.0 = the engine's default rate) → mono float32 16 kHz."""
    if voice.name not in SYNTHS.get(voice.synth, ()):
        raise ValueError(f"unknown voice {voice}")
    if voice.synth == "espeak":
        from modalities.speech.espeak import synthesize

        return synthesize(text, voice=voice.name, speed_wpm=round(165 * speed), pitch=pitch)
    if voice.synth == "flite":
        return _flite(voice.name, text, speed)
    if voice.synth == "festival":
        return _festival(voice.name, text, speed)
    return _hibari_speak(voice.name, text, speed)
