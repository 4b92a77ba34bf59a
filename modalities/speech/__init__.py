"""Speech: text-to-speech with espeak-ng (tests, benchmarks, projector training data; torch-free)."""

from modalities._lazy import lazy_exports

_EXPORTS = {
    "sample_corpus": "espeak",
    "synthesize": "espeak",
    "to_wav_bytes": "espeak",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
