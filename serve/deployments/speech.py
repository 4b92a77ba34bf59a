"""The speech deployment (text to speech): sentence by sentence, so that the first audio leaves
after the first sentence is spoken, not after the whole text.

Its own Serve deployment with its own replicas and resources, like the encoders: synthesis is CPU
(or GPU) work that must scale apart from the decoder. Audio leaves encoded in the client's format
(`modalities.speech.formats`); the realtime API and chat audio ask for `pcm` (24 kHz s16le).
A consumer that stops reading (a barge-in, a client gone) stops the synthesis after the sentence
being spoken: the generator is closed and no further sentence is started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modalities.speech.formats import StreamEncoder
from modalities.speech.tts import Synthesizer
from serve import metrics
from serve.config import ChorusConfig


class Speech:
    """Text → encoded audio chunks, one per sentence (the last chunk may be the encoder's tail)."""

    kind = "speech"

    def __init__(self, config: dict[str, Any], synthesizer_factory: Callable[..., Synthesizer] | None = None) -> None:
        self.config = ChorusConfig.model_validate(config)
        if self.config.speech is None:
            raise ValueError("the Speech deployment needs a `speech` section in the config")
        self.synthesizer = (synthesizer_factory or Synthesizer)(self.config.speech)
        # One synthesis at a time per replica: the engines use the replica's CPU claim; more sentences
        # at once would only slow each one (scale with replicas).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speech")
        # Load and run the default voice once now: the first caller should not wait for the model.
        default = self.config.speech.default_voice
        self.synthesizer.synthesize("Hello.", default)

    async def synthesize(self, text: str, voice: str, speed: float = 1.0, fmt: str = "pcm") -> AsyncIterator[bytes]:
        """Speak `text` with the client's `voice` → `fmt` bytes, a chunk per sentence as it is ready."""
        loop = asyncio.get_running_loop()
        encoder = StreamEncoder(fmt)
        sentences = self.synthesizer.stream(text, voice, speed)
        done = object()
        while True:
            started = time.perf_counter()
            audio = await loop.run_in_executor(self._thread, next, sentences, done)
            if audio is done:
                break
            metrics.SPEECH_LATENCY.observe(time.perf_counter() - started, tags={"voice": voice})
            chunk = await loop.run_in_executor(self._thread, encoder.feed, audio)
            if chunk:
                yield chunk
        tail = encoder.close()
        if tail:
            yield tail

    def voices(self) -> list[str]:
        return self.synthesizer.voice_names()

    def info(self) -> dict[str, Any]:
        return {"status": "ok", "voices": len(self.synthesizer.voice_names())}

    def __del__(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
