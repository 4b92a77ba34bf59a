"""int4 weight-only quantization (torchao, tinygemm kernels) and the bfloat16 tied head it keeps.

Group-wise 4-bit weights through the tinygemm kernels: on CPU torchao's `Int4OpaqueTensor`
(`_weight_int4pack_mm_for_cpu`), on CUDA `Int4WeightOnlyConfig` in the `tile_packed_to_4d` layout.
Both want bfloat16 activations (on CPU the float32 path exists but is ~30x slower than a float32
matmul), so an int4 layer in a float32 model runs as a bfloat16 island: its weight is quantized
from bfloat16 and hooks cast its input to bfloat16 and its output back. The kernels also need
`in_features` divisible by the group size and (CPU) `out_features` divisible by 16; layers that
don't fit stay in float and are listed in the report. If no layer fits, or a quantized layer cannot
run a forward pass here, quantization is refused with `UnsupportedQuantization` naming why.

A tied output head is stored in bfloat16 (another bfloat16 island, casts by hooks as above), not
in 4 bits: the head's rounding is where most greedy tokens flip — fp32 agreement 86 % with a 4-bit
head, 98 % with a float one, on `chorus bench`'s prompt set — while bfloat16 halves the largest
weight read per token (SmolLM2's head is 49,152 x 576: 113 MB in float32) and its memory. On CPU
the head's matmul runs on a oneDNN-prepacked copy (`PackedBfloat16Head`: 3.7 instead of 6.9 ms per
decode step, same logits), which costs the head's size again; int4 still weighs 0.33x fp32 with it.

int4 uses groups of 32 (the kernels also take 64 and 128): SmolLM2's packaged weights were Q4_1 in
blocks of 32, so 32-element groups put the 4-bit grid back where the GGUF had it (agreement 65 % →
86 % before the head change; weights 188 → 197 MB with a 4-bit head). Measured on this project's
2-core CPU machines.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modalities.llm.quant.report import QuantizationReport, UnsupportedQuantization

# The int4 group size (the tinygemm kernels accept 32, 64 and 128): the smallest, most accurate one
# (see the module docstring); a layer whose in_features it doesn't divide stays float.
INT4_GROUP_SIZES = (32,)
INT4_ACTIVATION_DTYPE = torch.bfloat16  # what the tinygemm kernels are fast with (CPU) or require (CUDA)
CPU_INT4_OUT_FEATURES_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu: "expect N to be dividable by 16"
PROBE_BATCH = 2  # rows of the dummy activation used to check a quantized layer actually runs


def quantize_int4_layers(linears: dict[str, nn.Linear], report: QuantizationReport) -> None:
    """Quantize each layer the kernels take (the others go to `report.skipped`, with why), then check
    that a quantized layer runs here; `UnsupportedQuantization` if none fits or it doesn't run."""
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
        module._chorus_hooks = hook_count(module)


def _bfloat16_island(module: nn.Module, model_dtype: torch.dtype, finish: Callable | None = None) -> None:
    """Hooks that run `module` in bfloat16 inside a `model_dtype` model: its input cast to bfloat16,
    its output back to `model_dtype` (or through `finish(module, args, output)`, which must do so).
    Nothing if the dtypes are the same."""
    if model_dtype != INT4_ACTIVATION_DTYPE:
        module.register_forward_pre_hook(lambda _, args: (args[0].to(INT4_ACTIVATION_DTYPE), *args[1:]))
        module.register_forward_hook(finish or (lambda _, args, output: output.to(model_dtype)))


def bfloat16_tied_head(model: nn.Module, head: nn.Module) -> None:
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
        head, model_dtype, lambda m, args, output: refine_top_logits(output.to(model_dtype), args[0], m.weight)
    )
    head._chorus_bf16_island = model_dtype  # `fast_linear` may skip the hooks
    head._chorus_hooks = hook_count(head)


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
    def build(cls, weight: nn.Parameter, out_dtype: torch.dtype) -> PackedBfloat16Head | None:
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
        return refine_top_logits(self._rounded(x).to(self.out_dtype), x, self.weight)

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


def refine_top_logits(logits: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`logits` (float, from a bfloat16 matmul) with the entries near each row's maximum recomputed
    exactly from `x` and `weight`, so the greedy choice and the top of the distribution don't
    depend on bfloat16's rounding (typically a handful of entries per row)."""
    flat, inputs = logits.view(-1, logits.shape[-1]), x.reshape(-1, x.shape[-1]).float()
    top = flat.max(dim=-1, keepdim=True).values
    rows, tokens = torch.nonzero(flat >= top - (top.abs() * REFINE_RELATIVE_BAND + REFINE_ABSOLUTE_BAND), as_tuple=True)
    flat[rows, tokens] = (inputs[rows] * weight[tokens].float()).sum(dim=-1)
    return logits


def hook_count(module: nn.Module) -> tuple[int, int]:
    return len(module._forward_pre_hooks), len(module._forward_hooks)
