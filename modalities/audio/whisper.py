"""Whisper runtime: audio -> encoder features (for the projector) and audio -> transcript.

Whisper always encodes a fixed 30-s window (3000 mel frames -> 1500 feature frames). For short
clips most of that is padding, so the runtime can run the encoder over only the mel frames a clip
needs, with the positional embedding sliced to match (whisper.cpp's `audio_ctx` idea):

- `encode` (features for the projector) uses exactly the clip's frames: ceil(samples / 320).
- `transcribe` cannot: the decoder was trained on 30-s windows and, given only the speech frames,
  keeps generating (measured: 551 % WER from endless repetition). Encoding the clip plus a margin
  of silence (default 5 s) restores the end-of-speech cue the decoder relies on; a token budget
  proportional to the duration is a second guard. See DESIGN.md, "Whisper short clips".

Decoding uses openai-whisper's own `transcribe` (greedy at temperature 0, its no-speech and
timestamp logic, its word alignment when asked) on a thin view of the model whose encoder is
windowed. Audio longer than one window goes through whisper's standard 30-s sliding windows.
Decoding at the request's one temperature, without whisper's temperature fallback, keeps its known
artefacts (text over silence, repetition loops over noise), so `clean_segments` drops those.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import whisper
import whisper.decoding
from torch import nn
from whisper.model import AudioEncoder, Whisper

from modalities import paths
from modalities.audio.config import AUTO_DEVICE, WhisperConfig
from modalities.audio.decode import SAMPLE_RATE, WINDOW_MEL_FRAMES, WINDOW_SAMPLES, decode_audio, feature_frames
from modalities.audio.mel import log_mel
from modalities.audio.options import TranscribeOptions
from modalities.audio.whisper_names import normalize_language
from modalities.errors import MediaError
from modalities.paths import PACKAGED

# Added to the duration-proportional token cap (`WhisperConfig.max_tokens_per_second`).
TOKEN_CAP_SLACK = 16
# whisper.transcribe's thresholds for "this window is silence" and "this decode failed".
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
# A segment whose audio never exceeds this peak (-60 dBFS) is digital silence: whatever whisper
# wrote there ("you", "Thank you.") is a hallucination.
SILENCE_PEAK = 1e-3


class Word(NamedTuple):
    """A word and when it was spoken, seconds from the start of the audio (whisper's alignment of
    its tokens to the audio frames through the decoder's cross-attention alignment heads)."""

    word: str
    start: float
    end: float
    probability: float


class Segment(NamedTuple):
    """A transcribed span, seconds from the start of the audio, with whisper's decoding record for
    it: the window offset in mel frames (`seek`), its tokens, the temperature it was decoded at, the
    window's average log-probability, compression ratio and no-speech probability, and its words
    when they were asked for."""

    start: float
    end: float
    text: str
    seek: int = 0
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    """What `WhisperRuntime.transcribe` returns; `language` is a whisper code ("en")."""

    text: str
    language: str
    segments: tuple[Segment, ...]
    duration: float  # seconds of input audio

    @property
    def words(self) -> tuple[Word, ...]:
        """Every segment's words in order (empty unless word timestamps were asked for)."""
        return tuple(word for seg in self.segments for word in seg.words)


def encode_mel(encoder: AudioEncoder, mel: torch.Tensor) -> torch.Tensor:
    """Whisper's AudioEncoder over any number of mel frames up to a full window.

    mel [B, n_mels, L] with L <= 3000 -> features [B, ceil(L / 2), n_audio_state]. Identical to
    `AudioEncoder.forward` except the positional embedding is sliced to the frames present.
    """
    x = F.gelu(encoder.conv1(mel))
    x = F.gelu(encoder.conv2(x))
    x = x.permute(0, 2, 1)
    n_ctx = x.shape[1]
    assert n_ctx <= encoder.positional_embedding.shape[0], "more mel frames than one Whisper window"
    x = (x + encoder.positional_embedding[:n_ctx]).to(x.dtype)
    for block in encoder.blocks:
        x = block(x)
    return encoder.ln_post(x)


class WindowedEncoder(nn.Module):
    """Drop-in for `Whisper.encoder` inside whisper's decoding: encodes only the first
    `n_mel_frames` of each 3000-frame mel window it is given."""

    def __init__(self, encoder: AudioEncoder, n_mel_frames: int) -> None:
        super().__init__()
        if not 0 < n_mel_frames <= WINDOW_MEL_FRAMES:
            raise ValueError(f"n_mel_frames must be in 1..{WINDOW_MEL_FRAMES}, got {n_mel_frames}")
        self.encoder = encoder
        self.n_mel_frames = n_mel_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == WINDOW_MEL_FRAMES and x.shape[-2] == self.encoder.conv1.in_channels:
            return encode_mel(self.encoder, x[..., : self.n_mel_frames])
        # whisper's language detection treats anything not shaped [1500, d] as mel and sends it
        # through `encoder`; our shorter features come back that way and are already encoded.
        assert x.shape[-1] == self.encoder.ln_post.normalized_shape[0], f"unexpected encoder input {tuple(x.shape)}"
        return x


class _WindowedWhisper:
    """What whisper.transcribe/decode need from a `Whisper`, with a windowed encoder.

    A view, not a copy: parameters, dims and kv-cache hooks are the wrapped model's. Methods whisper
    calls as `model.decode(...)` / `model.detect_language(...)` are rebound so they see this view.
    """

    decode = whisper.decoding.decode
    detect_language = whisper.decoding.detect_language

    def __init__(self, model: Whisper, n_mel_frames: int) -> None:
        self._model = model
        self.encoder = WindowedEncoder(model.encoder, n_mel_frames)

    def __call__(self, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # whisper's word alignment runs `model(mel, tokens)`: the same windowed frames the decoding saw
        return self._model.decoder(tokens, self.encoder(mel))

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def resolve_device(device: str) -> torch.device:
    if device == AUTO_DEVICE:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_whisper_model(spec: str, device: torch.device | str = "cpu") -> Whisper:
    """Load a `Whisper` from a WhisperConfig.model string (see its description)."""
    if spec == PACKAGED:
        from modalities.audio.weights import load_packaged_whisper

        return load_packaged_whisper(device)
    if spec in whisper.available_models():
        download_root = paths.cache_dir() / "whisper"
        try:
            return whisper.load_model(spec, device=device, download_root=str(download_root))
        except OSError as e:  # urllib's errors are OSErrors
            raise RuntimeError(
                f"could not fetch whisper model {spec!r} into {download_root} (no reachable hub?); "
                f"use model={PACKAGED!r} or a local .pt path"
            ) from e
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"whisper checkpoint {path} does not exist")
    return whisper.load_model(str(path), device=device)


def clean_segments(segments: list[dict], audio: np.ndarray) -> list[dict]:
    """The whisper.transcribe segments worth keeping, without greedy decoding's usual artefacts.

    With temperature 0 and no fallback, whisper's failure modes show up as (a) text over digital
    silence, (b) a window stuck repeating one phrase over noise (high compression ratio and high
    no-speech probability) and (c) the same segment repeated back to back. These are dropped:
    (a) by the audio's own peak level in the segment's span, (b) by whisper's own thresholds,
    (c) by keeping the first of consecutive segments with the same words.
    """
    duration = len(audio) / SAMPLE_RATE
    kept: list[dict] = []
    for seg in segments:
        start, end = min(float(seg["start"]), duration), min(float(seg["end"]), duration)
        first = int(start * SAMPLE_RATE)
        span = audio[first : max(math.ceil(end * SAMPLE_RATE), first + 1)]
        if not seg["text"].strip() or span.size == 0 or np.abs(span).max() < SILENCE_PEAK:
            continue
        if seg["compression_ratio"] > COMPRESSION_RATIO_THRESHOLD and seg["no_speech_prob"] > NO_SPEECH_THRESHOLD:
            continue
        if kept and _same_words(kept[-1]["text"], seg["text"]):
            continue
        kept.append({**seg, "start": start, "end": end})
    return kept


def _plain_prompt(prompt: str | None) -> str | None:
    """The prompt as plain text: whisper's tokenizer refuses text that spells a special token
    ("<|endoftext|>", "<|en|>"), so such spellings are broken up instead of reaching it."""
    if not prompt or not prompt.strip():
        return None
    return prompt.replace("<|", "< |")


def _segment(seg: dict, duration: float) -> Segment:
    """A whisper segment dict as a `Segment`, its words clamped into the clip."""
    words = []
    for w in seg.get("words") or ():
        start = min(max(float(w["start"]), 0.0), duration)
        end = min(max(float(w["end"]), start), duration)
        if w["word"].strip():
            words.append(Word(w["word"], round(start, 3), round(end, 3), float(w["probability"])))
    return Segment(
        start=round(float(seg["start"]), 3),
        end=round(float(seg["end"]), 3),
        text=seg["text"].strip(),
        seek=int(seg["seek"]),
        tokens=tuple(int(t) for t in seg["tokens"]),
        temperature=float(seg["temperature"]),
        avg_logprob=float(seg["avg_logprob"]),
        compression_ratio=float(seg["compression_ratio"]),
        no_speech_prob=float(seg["no_speech_prob"]),
        words=tuple(words),
    )


def _same_words(a: str, b: str) -> bool:
    words = lambda t: [w.strip(".,!?;:\"'").lower() for w in t.split()]  # noqa: E731
    return words(a) == words(b)


class WhisperRuntime:
    """Audio features and transcripts from an injected `whisper.model.Whisper`.

    Features are float32 on the CPU, [T, n_audio_state] with T = ceil(samples / 320) (50 per second),
    ready to travel to the LLM deployment. The runtime computes on the injected model's device;
    `config.device` and `config.threads` are applied by `from_config`, which loads the model.
    """

    def __init__(self, model: Whisper, config: WhisperConfig | None = None) -> None:
        self.model = model.eval()
        self.config = config or WhisperConfig()
        self.device = next(model.parameters()).device
        self.dtype = torch.float16 if (self.config.fp16 and self.device.type == "cuda") else torch.float32
        # whisper's decoding installs kv-cache hooks on the shared decoder modules for the duration
        # of a call; two concurrent calls on one model would write into each other's caches.
        self._decode_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: WhisperConfig) -> WhisperRuntime:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        model = load_whisper_model(config.model, resolve_device(config.device))
        return cls(model, config)

    @property
    def feature_dim(self) -> int:
        return self.model.dims.n_audio_state

    @property
    def n_mels(self) -> int:
        return self.model.dims.n_mels

    def decode(self, data: bytes) -> np.ndarray:
        """Client audio bytes -> mono float32 16 kHz [n], under this runtime's limits."""
        return decode_audio(data, self.config.limits)

    # -- features -------------------------------------------------------------------------------

    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """Mono 16 kHz audio [n] -> encoder features [ceil(n / 320), n_audio_state] (float32, CPU)."""
        return self.encode_batch([audio])[0]

    @torch.inference_mode()
    def encode_batch(self, audios: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Several clips at once. Each is cut into 30-s windows; windows with the same mel length
        run as one batch (all full windows together), so a clip's features never depend on its
        batch-mates. Returns one [T_i, n_audio_state] tensor per clip."""
        clips = [self._check_audio(audio) for audio in audios]
        # (clip index, window index, mel frames to encode, feature frames to keep, samples)
        windows: list[tuple[int, int, int, int, np.ndarray]] = []
        for ci, clip in enumerate(clips):
            for wi, start in enumerate(range(0, len(clip), WINDOW_SAMPLES)):
                chunk = clip[start : start + WINDOW_SAMPLES]
                keep = feature_frames(len(chunk))
                n_mel = 2 * keep if self.config.adaptive_window else WINDOW_MEL_FRAMES
                windows.append((ci, wi, n_mel, keep, chunk))

        outputs: dict[tuple[int, int], torch.Tensor] = {}
        step = self.config.encode_batch_windows
        for n_mel in sorted({w[2] for w in windows}):
            same_length = [w for w in windows if w[2] == n_mel]
            for group in (same_length[i : i + step] for i in range(0, len(same_length), step)):
                mel = torch.stack([log_mel(w[4], self.n_mels, n_mel) for w in group])
                feats = encode_mel(self.model.encoder, mel.to(self.device, self.dtype))
                for (ci, wi, _, keep, _), f in zip(group, feats):
                    outputs[(ci, wi)] = f[:keep].float().cpu()

        return [
            torch.cat([outputs[(ci, wi)] for wi in range(math.ceil(len(clip) / WINDOW_SAMPLES))])
            for ci, clip in enumerate(clips)
        ]

    # -- transcripts ----------------------------------------------------------------------------

    def transcribe(
        self, audio: np.ndarray, language: str | None = None, options: TranscribeOptions | None = None
    ) -> Transcript:
        """Mono 16 kHz audio [n] -> Transcript (`options.task` "translate": English text).

        `language` (code or name; overrides `options.language`) or else the config's default names
        the spoken language; with neither, and always for a translation without one, whisper detects
        it from the first window. Word timestamps cost a second decoder pass per window (the
        alignment) and run only when `options.word_timestamps` asks."""
        options = options or TranscribeOptions()
        audio = self._check_audio(audio)
        language = self._language(language or options.language, options)
        if options.task == "translate" and not self.model.is_multilingual:
            raise MediaError("this Whisper model is English-only; it cannot translate", param="model", code="invalid_value")

        duration = len(audio) / SAMPLE_RATE
        model: Whisper | _WindowedWhisper = self.model
        decode_options: dict = {}
        if self.config.max_tokens_per_second is not None:
            # per decoding window, which holds at most 30 s of audio
            window_s = min(duration, WINDOW_SAMPLES / SAMPLE_RATE)
            cap = math.ceil(self.config.max_tokens_per_second * window_s) + TOKEN_CAP_SLACK
            decode_options["sample_len"] = min(cap, self.model.dims.n_text_ctx // 2)
        if self.config.adaptive_window and len(audio) <= WINDOW_SAMPLES:
            margin = round(self.config.adaptive_margin_s * SAMPLE_RATE)
            n_mel = min(2 * feature_frames(len(audio) + margin), WINDOW_MEL_FRAMES)
            model = _WindowedWhisper(self.model, n_mel)

        with self._decode_lock, torch.inference_mode():
            result = whisper.transcribe(
                model,
                torch.from_numpy(audio),
                verbose=None,
                temperature=options.decoding_temperature,
                compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
                logprob_threshold=LOGPROB_THRESHOLD,
                no_speech_threshold=NO_SPEECH_THRESHOLD,
                language=language,
                task=options.task,
                fp16=self.dtype == torch.float16,
                # Conditioning on the previous window carries a repetition loop into every later one.
                condition_on_previous_text=False,
                # The prompt (vocabulary, spelling, style) is given to every window, not just the first.
                initial_prompt=_plain_prompt(options.prompt),
                carry_initial_prompt=bool(options.prompt),
                word_timestamps=options.word_timestamps,
                **decode_options,
            )
        kept = clean_segments(result["segments"], audio)
        return Transcript(
            # whisper's own convention: segment texts carry their leading space (none for CJK)
            text="".join(seg["text"] for seg in kept).strip(),
            language=result["language"],
            segments=tuple(_segment(seg, duration) for seg in kept),
            duration=duration,
        )

    def _language(self, language: str | None, options: TranscribeOptions) -> str | None:
        """The whisper code to decode with, or None to detect it. A translation detects the spoken
        language unless the request names it: the config's default describes transcriptions."""
        try:
            if language:
                language = normalize_language(language)
            elif options.task == "transcribe":
                language = self.config.language
        except ValueError as e:
            raise MediaError(str(e), param="language", code="invalid_language") from e
        if language not in (None, "en") and not self.model.is_multilingual:
            raise MediaError(f"this Whisper model is English-only; cannot transcribe {language!r}", param="language")
        return language

    @staticmethod
    def _check_audio(audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio [n_samples], got shape {audio.shape}")
        if audio.size == 0:
            raise MediaError("audio has no samples", param="audio", code="empty_audio")
        return np.ascontiguousarray(audio, dtype=np.float32)
