"""Audio: config and transcription options (torch-free), client audio decoding and limits, log-mel,
the Whisper runtime, weights."""

from modalities._lazy import lazy_exports

_EXPORTS = {
    "WhisperConfig": "config",
    "SAMPLE_RATE": "decode",
    "AudioLimits": "decode",
    "decode_audio": "decode",
    "log_mel": "mel",
    "TranscribeOptions": "options",
    "Segment": "whisper",
    "Transcript": "whisper",
    "WhisperRuntime": "whisper",
    "Word": "whisper",
    "normalize_language": "whisper_names",
    "prepare_whisper": "weights",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
