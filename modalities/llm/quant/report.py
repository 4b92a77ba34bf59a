"""What quantization did to a model, and the error for a quantization that cannot run."""

from __future__ import annotations

from dataclasses import dataclass, field

from modalities.llm.config import Quantization


class UnsupportedQuantization(ValueError):
    """The requested quantization cannot run with this model on this device/dtype."""


@dataclass
class QuantizationReport:
    """What `quantize_model` did: which linear layers were quantized, which stayed float and why."""

    mode: Quantization
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    smoothed: list[str] = field(default_factory=list)  # w8a8: linears whose inputs SmoothQuant rescaled
