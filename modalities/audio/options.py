"""What a transcription asks of Whisper beyond the audio: task, language, prompt, temperature and
word timestamps. Torch-free: the HTTP ingress builds these and they travel to the encoder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from modalities.errors import InputError

Task = Literal["transcribe", "translate"]
TASKS: tuple[str, ...] = get_args(Task)
MAX_TEMPERATURE = 1.0  # OpenAI's range for the Audio API's `temperature`: 0..1
# Below this a temperature decodes greedily: sampling at it is greedy to within float precision
# anyway, and whisper divides the logits by it (a denormal 5e-324 makes them inf, then NaN).
MIN_SAMPLING_TEMPERATURE = 1e-3
# Whisper reads at most n_text_ctx // 2 - 1 prompt tokens (223 in every released size; OpenAI says
# "the final 224 tokens") and keeps the last ones. Past this many characters a prompt is refused
# rather than mostly thrown away: 224 tokens of English are ~1,000 characters.
MAX_PROMPT_CHARS = 2_000


@dataclass(frozen=True)
class TranscribeOptions:
    """One request's decoding choices. `language` is a code or English name (None: the config's
    default for `transcribe`, detected for `translate`); `prompt` is whisper's `initial_prompt`;
    `temperature` 0 is greedy decoding; `word_timestamps` runs the cross-attention alignment."""

    task: Task = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}", param="task")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            raise InputError("temperature must be a number from 0 to 1", param="temperature")
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise InputError("temperature must be a number from 0 to 1", param="temperature")
        if self.prompt is not None and len(self.prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"prompt is over {MAX_PROMPT_CHARS} characters", param="prompt", code="prompt_too_long")
        if self.word_timestamps and self.task == "translate":
            # whisper warns that word timings on translations are unreliable; OpenAI offers none
            raise InputError("word timestamps are only available for transcriptions", param="timestamp_granularities")

    @property
    def decoding_temperature(self) -> float:
        """The temperature whisper decodes at: 0 (greedy) below `MIN_SAMPLING_TEMPERATURE`."""
        return float(self.temperature) if self.temperature >= MIN_SAMPLING_TEMPERATURE else 0.0

    @property
    def sampled(self) -> bool:
        """True when decoding samples: the same request may get another answer."""
        return self.decoding_temperature > 0

    def cache_key(self) -> tuple[object, ...]:
        """Everything that changes the transcript, for the encoder's cache."""
        return (self.task, self.language, self.prompt, self.decoding_temperature, self.word_timestamps)
