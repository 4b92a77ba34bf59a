"""The continuous-batching decode engine: scheduler, Llama forward, slot KV cache, prefix cache."""

from modalities._lazy import lazy_exports

_EXPORTS = {
    "BatchedEngine": "batched",
    "EngineStats": "batched",
    "EngineError": "stream",
    "TokenStream": "stream",
    "LlamaForward": "forward",
    "SlotCache": "slots",
    "PrefixCache": "prefix",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
