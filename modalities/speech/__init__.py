"""Speech: text to speech (hibari, espeak-ng), OpenAI's speech response formats and server voice
activity detection (Silero); torch-free. `espeak` also serves tests, benchmarks and training data."""

from modalities._lazy import lazy_exports

_EXPORTS = {
    "sample_corpus": "espeak",
    "synthesize": "espeak",
    "to_wav_bytes": "espeak",
    "EspeakEngine": "tts",
    "HibariEngine": "tts",
    "SpeechEngine": "tts",
    "Synthesizer": "tts",
    "UnknownVoice": "tts",
    "split_sentences": "sentences",
    "SentenceStream": "sentences",
    "ENCODABLE": "formats",
    "SPEECH_FORMATS": "formats",
    "StreamEncoder": "formats",
    "content_type": "formats",
    "encode": "formats",
    "SileroVad": "vad",
    "StreamingVad": "vad",
    "VadEvent": "vad",
    "VadModel": "vad",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
