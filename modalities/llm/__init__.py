"""The LLM: config and sampling parameters (torch-free), the runtime, its decode loops, weights."""

from modalities._lazy import lazy_exports

_EXPORTS = {
    "LLMConfig": "config",
    "Quantization": "config",
    "SUPPORTED_ARCHITECTURES": "config",
    "check_batched_architecture": "config",
    "MAX_STOP_SEQUENCES": "params",
    "SEED_RANGE": "params",
    "SamplingParams": "params",
    "Completion": "runtime",
    "EventStream": "runtime",
    "FinishReason": "runtime",
    "LLMRuntime": "runtime",
    "TokenEvent": "runtime",
    "DecodeLoop": "decode",
    "EagerDecodeLoop": "decode",
    "prepare_llm": "weights",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
