"""LLM quantization: int8 / int4 weight-only (torchao), W8A8 (FBGEMM), fast linears, weight accounting."""

from modalities._lazy import lazy_exports

_EXPORTS = {
    "quantize_model": "core",
    "QuantizationReport": "report",
    "UnsupportedQuantization": "report",
    "PackedBfloat16Head": "int4",
    "fast_linear": "fast",
    "fast_linears": "fast",
    "compute_dtype": "memory",
    "module_device": "memory",
    "tensor_bytes": "memory",
    "weight_bytes": "memory",
    "Int8BlockEmbedding": "w8a8",
    "Int8Head": "w8a8",
    "Int8Linear": "w8a8",
    "calibration_ids": "w8a8",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
