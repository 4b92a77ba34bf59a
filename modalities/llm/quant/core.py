"""Quantization of a causal LM (weight-only with torchao; W8A8 through FBGEMM), and honest
weight-memory accounting.

- `int8`: torchao `Int8WeightOnlyConfig` (per-row scales) on the linear layers; runs anywhere.
- `int4`: group-wise 4-bit weights through the tinygemm kernels: on CPU torchao's
  `Int4OpaqueTensor` (`_weight_int4pack_mm_for_cpu`), on CUDA `Int4WeightOnlyConfig` in the
  `tile_packed_to_4d` layout. Both want bfloat16 activations (on CPU the float32 path exists but
  is ~30x slower than a float32 matmul), so an int4 layer in a float32 model runs as a bfloat16
  island: its weight is quantized from bfloat16 and hooks cast its input to bfloat16 and its output
  back. The kernels also need `in_features` divisible by the group size and (CPU) `out_features`
  divisible by 16; layers that don't fit stay in float and are listed in the report. If no layer
  fits, or a quantized layer cannot run a forward pass here, quantization is refused with
  `UnsupportedQuantization` naming why.
- `w8a8`: int8 weights and per-token int8 activations through FBGEMM, SmoothQuant-calibrated
  (CPU, float32 models; `llm_w8a8` has the details, including its embedding and head).

A tied output head (`lm_head` sharing the input embedding's weight) stays tied in int8 and int4
(quantizing it would untie it: the embedding stays and a quantized copy is added).
int8: the head stays in float. torchao's eager int8 matmul converts the whole weight to float on
every call, which on the head costs more than it saves (decode 9 vs 20 tok/s with and without it)
and adds 28 MB. int4: the tied weight is stored in bfloat16 (another bfloat16 island, casts by
hooks as above), not in 4 bits: the head's rounding is where most greedy tokens flip — fp32
agreement 86 % with a 4-bit head, 98 % with a float one, on `chorus bench`'s prompt set — while
bfloat16 halves the largest weight read per token (SmolLM2's head is 49,152 x 576: 113 MB in
float32) and its memory. On CPU the head's matmul runs on a oneDNN-prepacked copy
(`PackedBfloat16Head`: 3.7 instead of 6.9 ms per decode step, same logits), which costs the
head's size again; int4 still weighs 0.33x fp32 with it.

int4 uses groups of 32 (the kernels also take 64 and 128): SmolLM2's packaged weights were Q4_1 in
blocks of 32, so 32-element groups put the 4-bit grid back where the GGUF had it (agreement 65 % →
86 % before the head change; weights 188 → 197 MB with a 4-bit head). Measured on this project's
2-core CPU machines.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from modalities.llm.config import QUANTIZATIONS, Quantization
from modalities.llm.quant import w8a8 as llm_w8a8
from modalities.llm.quant.w8a8 import Int8BlockEmbedding, Int8Group, Int8Head, Int8Linear, Int8Part

# The int4 group size (the tinygemm kernels accept 32, 64 and 128): the smallest, most accurate one
# (see the module docstring); a layer whose in_features it doesn't divide stays float.
INT4_GROUP_SIZES = (32,)
INT4_ACTIVATION_DTYPE = torch.bfloat16  # what the tinygemm kernels are fast with (CPU) or require (CUDA)
CPU_INT4_OUT_FEATURES_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu: "expect N to be dividable by 16"
PROBE_BATCH = 2  # rows of the dummy activation used to check a quantized layer actually runs
TIED_HEAD_INT8_REASON = "tied to the input embedding; torchao's eager int8 matmul is slower than float on it"
TIED_HEAD_INT4_REASON = (
    "tied to the input embedding; kept in bfloat16, since a 4-bit head flips most of the greedy tokens int4 changes"
)
TIED_HEAD_INT4_INT8_REASON = (
    "tied to the input embedding; stored as int8 blocks of 32 (the head multiplies in int8 through FBGEMM, each "
    "row's top 64 logits recomputed in float32), since a 4-bit head flips most of the greedy tokens int4 changes"
)


class UnsupportedQuantization(ValueError):
    """The requested quantization cannot run with this model on this device/dtype."""


@dataclass
class QuantizationReport:
    """What `quantize_model` did: which linear layers were quantized, which stayed float and why."""

    mode: Quantization
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    smoothed: list[str] = field(default_factory=list)  # w8a8: linears whose inputs SmoothQuant rescaled


def quantize_model(
    model: nn.Module, mode: Quantization, calibration: Sequence[Sequence[int]] | None = None
) -> QuantizationReport:
    """Quantize `model`'s linear weights in place (weights must already be on their final device).

    `calibration`: token-id sequences w8a8 measures activation ranges on (required for w8a8;
    `llm_w8a8.calibration_ids(tokenizer)` gives the default set).
    """
    if mode not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {mode!r}; known: {', '.join(QUANTIZATIONS)}")
    report = QuantizationReport(mode=mode)
    if mode == "none":
        return report
    if mode == "w8a8":
        _quantize_w8a8(model, calibration, report)
        return report
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    tied_head = _tied_output_head(model)
    tied_reason = TIED_HEAD_INT8_REASON if mode == "int8" else TIED_HEAD_INT4_REASON
    report.skipped = {name: tied_reason for name, module in linears.items() if module is tied_head}
    if mode == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        report.quantized = [name for name in linears if name not in report.skipped]
        targets = set(report.quantized)
        # set_inductor_config=False: don't rewrite global inductor settings as a side effect of loading.
        quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=lambda m, fqn: fqn in targets)
        return report
    _quantize_int4({name: m for name, m in linears.items() if name not in report.skipped}, report)
    if tied_head is not None:
        if _int8_tied_head(model, tied_head):
            head_name = next(name for name, module in linears.items() if module is tied_head)
            report.skipped[head_name] = TIED_HEAD_INT4_INT8_REASON
        else:
            _bfloat16_tied_head(model, tied_head)
    return report


def _int8_tied_head(model: nn.Module, head: nn.Module) -> bool:
    """On CPU with FBGEMM and float32 activations: the tied embedding/head as one int8 block table
    (`Int8BlockEmbedding`, exact for a GGUF Q8_0 table) and an `Int8Head` over it. Against the
    bfloat16 table plus its oneDNN-packed copy (57 + 57 MB for SmolLM2) it holds 31 MB and reads
    half the bytes per step (1-row head 3.6 -> ~1.5 ms). False (nothing changed) elsewhere."""
    embedding = model.get_input_embeddings()
    if not hasattr(model, "set_output_embeddings"):
        return False
    try:
        llm_w8a8.check_available(embedding.weight.device, embedding.weight.dtype)
    except llm_w8a8.UnavailableW8A8:
        return False
    _int8_table_and_head(model, head)
    return True


def _int8_table_and_head(model: nn.Module, head: nn.Module | None) -> None:
    """The input embedding as an `Int8BlockEmbedding`; `head` (if any) as an `Int8Head` over that
    table when tied to it, else over a table of its own."""
    embedding = model.get_input_embeddings()
    table = Int8BlockEmbedding(embedding.weight)
    model.set_input_embeddings(table)
    if head is not None:
        tied = head.weight is embedding.weight
        model.set_output_embeddings(Int8Head(table if tied else Int8BlockEmbedding(head.weight)))
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False  # nothing left to tie; keep transformers from re-tying


def _tied_output_head(model: nn.Module) -> nn.Module | None:
    """The output projection if it shares its weight with the input embedding, else None."""
    if not hasattr(model, "get_output_embeddings"):
        return None
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    return head if head is not None and head.weight is embedding.weight else None


def _int4_config(device: torch.device, group_size: int):
    if device.type == "cpu":
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)
    from torchao.quantization import Int4WeightOnlyConfig

    return Int4WeightOnlyConfig(
        group_size=group_size, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
    )


def _int4_skip_reason(module: nn.Linear) -> str | None:
    if not any(module.in_features % g == 0 for g in INT4_GROUP_SIZES):
        return f"in_features {module.in_features} not divisible by any group size {INT4_GROUP_SIZES}"
    if module.weight.device.type == "cpu" and module.out_features % CPU_INT4_OUT_FEATURES_MULTIPLE:
        return f"out_features {module.out_features} not divisible by {CPU_INT4_OUT_FEATURES_MULTIPLE} (CPU kernel)"
    return None


def _quantize_int4_layer(module: nn.Linear) -> None:
    """Quantize one layer from a bfloat16 copy of its weight; cast around it if the model isn't bf16."""
    from torchao.quantization import quantize_

    original = module.weight
    model_dtype = original.dtype
    group_size = next(g for g in INT4_GROUP_SIZES if module.in_features % g == 0)
    module.weight = nn.Parameter(original.detach().to(INT4_ACTIVATION_DTYPE), requires_grad=False)
    try:
        quantize_(module, _int4_config(original.device, group_size))
    except Exception:
        module.weight = original  # leave the layer as it was
        raise
    _bfloat16_island(module, model_dtype)
    weight = module.weight
    if (
        original.device.type == "cpu"
        and module.bias is None
        and getattr(weight, "act_mapping_type", "") is None
        and getattr(weight, "act_pre_scale", "") is None
        and tuple(weight.qdata.shape) == (module.out_features, module.in_features // 2)
    ):
        module._chorus_int4_cpu = (group_size, model_dtype)  # `fast_linear` may call the kernel directly
        module._chorus_hooks = _hook_count(module)


def _bfloat16_island(module: nn.Module, model_dtype: torch.dtype, finish: Callable | None = None) -> None:
    """Hooks that run `module` in bfloat16 inside a `model_dtype` model: its input cast to bfloat16,
    its output back to `model_dtype` (or through `finish(module, args, output)`, which must do so).
    Nothing if the dtypes are the same."""
    if model_dtype != INT4_ACTIVATION_DTYPE:
        module.register_forward_pre_hook(lambda _, args: (args[0].to(INT4_ACTIVATION_DTYPE), *args[1:]))
        module.register_forward_hook(finish or (lambda _, args, output: output.to(model_dtype)))


def _bfloat16_tied_head(model: nn.Module, head: nn.Module) -> None:
    """Store the tied embedding/head weight in bfloat16; both keep answering in the model's dtype."""
    embedding = model.get_input_embeddings()
    model_dtype = embedding.weight.dtype
    if model_dtype == INT4_ACTIVATION_DTYPE:
        return
    weight = nn.Parameter(embedding.weight.detach().to(INT4_ACTIVATION_DTYPE), requires_grad=False)
    embedding.weight = weight
    embedding.register_forward_hook(lambda _, args, output: output.to(model_dtype))
    packed = PackedBfloat16Head.build(weight, model_dtype) if hasattr(model, "set_output_embeddings") else None
    if packed is not None:
        model.set_output_embeddings(packed)
        return
    # Elsewhere (CUDA, no oneDNN) a hooked nn.Linear: bfloat16 in, logits back in the model's dtype
    # with the top ones recomputed in float32 like the packed head's (from the bfloat16-cast input
    # the hook sees; `fast_linear`'s call uses the float input).
    head.weight = weight
    _bfloat16_island(
        head, model_dtype, lambda m, args, output: _refine_top_logits(output.to(model_dtype), args[0], m.weight)
    )
    head._chorus_bf16_island = model_dtype  # `fast_linear` may skip the hooks
    head._chorus_hooks = _hook_count(head)


class PackedBfloat16Head(nn.Module):
    """A tied output head whose bfloat16 matmul runs on a oneDNN-prepacked copy of its weight.

    `F.linear` with a bfloat16 weight on CPU goes through oneDNN too but reorders the whole weight
    into oneDNN's blocked layout on every call: for SmolLM2's 49,152 x 576 head, 6.9 ms per decode
    step at one row, 3.7 ms prepacked (8 rows: 9.6 vs 4.5 ms; the same logits, bit for bit). The
    packed copy costs the head's size again (57 MB here), counted by `weight_bytes`. `weight` stays
    the embedding's Parameter, so the tie is still visible.
    """

    def __init__(self, weight: nn.Parameter, packed: torch.Tensor, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.out_dtype = out_dtype
        self.register_buffer("packed_weight", packed, persistent=False)

    @classmethod
    def build(cls, weight: nn.Parameter, out_dtype: torch.dtype) -> "PackedBfloat16Head | None":
        """The packed head, or None where oneDNN can't pack or run it (not a CPU, no mkldnn build)."""
        if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return None
        try:
            with torch.inference_mode():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
                head = cls(weight, packed, out_dtype)
                probe = torch.linspace(-1, 1, PROBE_BATCH * head.in_features).view(PROBE_BATCH, -1).to(weight.dtype)
                if not torch.equal(head._rounded(probe), F.linear(probe, weight)):
                    return None
        except (RuntimeError, AttributeError):
            return None
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _refine_top_logits(self._rounded(x).to(self.out_dtype), x, self.weight)

    def _rounded(self, x: torch.Tensor) -> torch.Tensor:
        """The packed bfloat16 matmul alone: logits rounded to bfloat16."""
        return torch.ops.mkldnn._linear_pointwise(
            x.to(INT4_ACTIVATION_DTYPE), self.packed_weight, None, "none", [None], ""
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN-packed bfloat16"


# Logits come out of a bfloat16 matmul rounded to 8 significant bits: at |logit| ~ 25 the grid step
# is 0.125, coarser than many greedy near-ties (SmolLM2's "The" vs "L" for "What is the capital of
# France?" differ by 0.08 in float32 and round to the same bfloat16 value). Every logit within this
# relative band of its row's maximum is recomputed in float32 (x in float32 times the stored
# weight): 2^-6 is 8x the output rounding (2^-9) plus room for the input's own rounding to bfloat16.
REFINE_RELATIVE_BAND = 2.0**-6
REFINE_ABSOLUTE_BAND = 0.05


def _refine_top_logits(logits: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`logits` (float, from a bfloat16 matmul) with the entries near each row's maximum recomputed
    exactly from `x` and `weight`, so the greedy choice and the top of the distribution don't
    depend on bfloat16's rounding (typically a handful of entries per row)."""
    flat, inputs = logits.view(-1, logits.shape[-1]), x.reshape(-1, x.shape[-1]).float()
    top = flat.max(dim=-1, keepdim=True).values
    rows, tokens = torch.nonzero(flat >= top - (top.abs() * REFINE_RELATIVE_BAND + REFINE_ABSOLUTE_BAND), as_tuple=True)
    flat[rows, tokens] = (inputs[rows] * weight[tokens].float()).sum(dim=-1)
    return logits


def _hook_count(module: nn.Module) -> tuple[int, int]:
    return len(module._forward_pre_hooks), len(module._forward_hooks)


def fast_linears(modules: Sequence[nn.Module]) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """`fast_linear` for layers that read the same input, as one callable returning their outputs:
    the parts of one W8A8 `Int8Group` run as its single GEMM; separate `Int8Linear`s (a layout
    `fuse_groups` doesn't know) split the input into int8 parts once for all of them."""
    fasts = [fast_linear(m) for m in modules]
    group = getattr(modules[0], "group", None)
    if (
        isinstance(group, Int8Group)
        and [getattr(m, "group", None) for m in modules] == [group] * len(group.sizes)
        and [m.index for m in modules] == list(range(len(group.sizes)))
        and all(f == m.forward for m, f in zip(modules, fasts))
    ):
        return group.forward  # one GEMM for the whole group
    if all(isinstance(m, Int8Linear) and f == m.forward for m, f in zip(modules, fasts)):
        return llm_w8a8.shared_input(modules)
    return lambda x: tuple(f(x) for f in fasts)


def fast_linear(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable computing `module(x)` for a linear layer, skipping per-call Python machinery where
    this module knows it is safe: an int4 CPU layer calls the tinygemm kernel directly (no tensor-
    subclass dispatch, no hooks: ~20 vs ~37 us per decode-step call), a bfloat16-island linear calls
    `F.linear` with the casts inline, a large plain float32 layer pads 2-3 rows to 4 (`_padded_linear`).
    Anything else is the module itself.
    """
    if isinstance(module, (Int8Linear, Int8Part)) and _hook_count(module) == (0, 0):
        return module.forward
    if _gemv_prone(module):
        return _padded_linear(module)
    if not isinstance(module, nn.Linear) or _hook_count(module) != getattr(module, "_chorus_hooks", None):
        return module  # not ours, or someone else hooked it since: their hooks must run
    if hasattr(module, "_chorus_int4_cpu"):
        group_size, out_dtype = module._chorus_int4_cpu
        packed, scale_and_zero = module.weight.qdata, module.weight.scale_and_zero
        in_features, out_features = module.in_features, module.out_features
        kernel = torch.ops.aten._weight_int4pack_mm_for_cpu

        def int4(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, in_features).to(INT4_ACTIVATION_DTYPE).contiguous()
            return kernel(flat, packed, group_size, scale_and_zero).to(out_dtype).view(*x.shape[:-1], out_features)

        return int4
    if hasattr(module, "_chorus_bf16_island"):
        out_dtype, weight = module._chorus_bf16_island, module.weight

        def bf16(x: torch.Tensor) -> torch.Tensor:
            return _refine_top_logits(F.linear(x.to(INT4_ACTIVATION_DTYPE), weight).to(out_dtype), x, weight)

        return bf16 if module.bias is None else module
    return module


# torch's CPU float32 matmul multiplies 2 or 3 rows as one matrix-vector product per row, each
# reading the whole weight again; from 4 rows on it runs a blocked GEMM that reads it once. For
# SmolLM2's 49,152 x 576 head (113 MB), 1 thread: 10.1 ms at 1 row, 22.8 at 2, 34.6 at 3, 16.6 at
# 4, 18.9 at 8. A large plain float32 layer therefore gets 2 or 3 rows padded to 4. Smaller layers
# stay as they are: padding them too could not gain in a decode step, where a 4-row float32 step
# already costs what a 2-row one does (~80 ms; a one-pass GEMM would need prepacked weight copies).
GEMM_MIN_ROWS = 4
GEMV_PRONE_MIN_BYTES = 32 << 20


def _gemv_prone(module: nn.Module) -> bool:
    """A plain, unhooked CPU float32 `nn.Linear` whose weight is large enough that re-reading it
    per row (2-3 rows, see `GEMM_MIN_ROWS`) costs more than padding the rows."""
    weight = getattr(module, "weight", None)
    return (
        type(module) is nn.Linear
        and _hook_count(module) == (0, 0)
        and type(weight) is nn.Parameter  # a quantized weight's type is its tensor subclass
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.numel() * weight.element_size() >= GEMV_PRONE_MIN_BYTES
    )


def _padded_linear(module: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module(x)`, with 2 or 3 rows of `x` padded with zero rows to `GEMM_MIN_ROWS` (the padding's
    outputs are dropped; every row's result is the blocked GEMM's, as for 4 rows or more)."""
    weight, bias = module.weight, module.bias

    def linear(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        rows = flat.shape[0]
        if not 1 < rows < GEMM_MIN_ROWS:
            return F.linear(x, weight, bias)
        padded = torch.cat((flat, flat.new_zeros(GEMM_MIN_ROWS - rows, flat.shape[1])))
        return F.linear(padded, weight, bias)[:rows].view(*x.shape[:-1], weight.shape[0])

    return linear


def _quantize_int4(linears: dict[str, nn.Linear], report: QuantizationReport) -> None:
    probe: nn.Linear | None = None
    for name, module in linears.items():
        reason = _int4_skip_reason(module)
        if reason is not None:
            report.skipped[name] = reason
            continue
        input_dtype = module.weight.dtype
        try:
            _quantize_int4_layer(module)
        except (RuntimeError, AssertionError, NotImplementedError) as e:
            report.skipped[name] = f"{type(e).__name__}: {e}"
            continue
        report.quantized.append(name)
        if probe is None:
            probe, probe_dtype = module, input_dtype
    if probe is None:
        reasons = "; ".join(f"{n}: {r}" for n, r in list(report.skipped.items())[:3])
        raise UnsupportedQuantization(f"int4: no linear layer of this model fits the int4 kernels ({reasons})")
    device = probe.weight.device
    activation = torch.zeros(PROBE_BATCH, probe.in_features, dtype=probe_dtype, device=device)
    try:
        with torch.inference_mode():
            probe(activation)
    except (RuntimeError, AssertionError, NotImplementedError) as e:
        raise UnsupportedQuantization(
            f"int4 weight-only cannot run on {device.type} here ({type(e).__name__}: {e}); use int8"
        ) from e


def _quantize_w8a8(model: nn.Module, calibration: Sequence[Sequence[int]] | None, report: QuantizationReport) -> None:
    """Calibrate, smooth (Llama layout), then swap every linear for an `Int8Linear`, the embedding
    for an `Int8BlockEmbedding` and the head for an `Int8Head` (see `llm_w8a8`)."""
    embedding = model.get_input_embeddings()
    try:
        llm_w8a8.check_available(embedding.weight.device, embedding.weight.dtype)
    except llm_w8a8.UnavailableW8A8 as e:
        raise UnsupportedQuantization(str(e)) from e
    if not calibration:
        raise ValueError("w8a8 needs calibration token ids (llm_w8a8.calibration_ids(tokenizer))")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}
    ranges = llm_w8a8.input_ranges(model, list(linears.values()), calibration)
    report.smoothed = llm_w8a8.smooth_llama_layers(model, ranges)
    name = "a fused group"
    try:
        fused = llm_w8a8.fuse_groups(model, linears)  # q/k/v and gate/up: one GEMM each
        report.quantized.extend(fused)
        for name, module in linears.items():
            if name in fused:
                continue
            parent, _, child = name.rpartition(".")
            residual = not name.endswith(llm_w8a8.SINGLE_PART_LINEARS)
            setattr(model.get_submodule(parent), child, Int8Linear(module.weight, module.bias, residual=residual))
            report.quantized.append(name)
    except llm_w8a8.UnavailableW8A8 as e:  # a layer FBGEMM can't take (the model is left part-converted)
        raise UnsupportedQuantization(f"w8a8: {name}: {e}") from e
    if head is not None:
        report.quantized.append(next(n for n, m in model.named_modules() if m is head))
    _int8_table_and_head(model, head)
    with torch.inference_mode():
        model(input_ids=torch.zeros(1, llm_w8a8.PROBE_ROWS, dtype=torch.long), use_cache=False)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's activations flow in: what its input embedding returns, which may
    differ from how the embedding is stored (int4 keeps a tied embedding in bfloat16 behind a cast).
    """
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        return embedding(torch.zeros(1, dtype=torch.long, device=module_device(embedding))).dtype


def module_device(module: nn.Module) -> torch.device:
    """Where a module's first parameter or buffer lives (an `Int8BlockEmbedding` has only buffers)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def tensor_bytes(tensor: torch.Tensor, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes a tensor really holds, looking inside tensor subclasses (torchao's quantized weights
    are wrappers whose own `element_size()` describes the logical float dtype, not the packed data).

    `seen` dedupes storage shared between tensors (tied weights) across calls.
    """
    if is_traceable_wrapper_subclass(tensor):
        inner_names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name), seen) for name in inner_names)
    nbytes = tensor.numel() * tensor.element_size()
    if seen is not None:
        # oneDNN's opaque tensors have no storage pointer; each is its own allocation.
        key = (id(tensor), nbytes) if tensor.is_mkldnn else (tensor.data_ptr(), nbytes)
        if key in seen:
            return 0
        seen.add(key)
    return nbytes


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, shared storage counted once, plus what FBGEMM's packed
    int8 weights hold (`Int8Linear.packed_bytes`; they are not tensors torch can see)."""
    seen: set[tuple[int, int]] = set()
    tensors = sum(tensor_bytes(t, seen) for t in (*model.parameters(), *model.buffers()))
    return tensors + sum(m.packed_bytes for m in model.modules() if isinstance(m, Int8Linear))
