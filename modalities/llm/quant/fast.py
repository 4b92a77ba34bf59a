"""Fast paths for a model's linear layers in our own forward (the batched engine's): each layer as
a plain callable that skips per-call Python machinery where that is known to be safe."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modalities.llm.quant import w8a8 as llm_w8a8
from modalities.llm.quant.int4 import INT4_ACTIVATION_DTYPE, hook_count, refine_top_logits
from modalities.llm.quant.w8a8 import Int8Group, Int8Linear, Int8Part


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
    if isinstance(module, (Int8Linear, Int8Part)) and hook_count(module) == (0, 0):
        return module.forward
    if _gemv_prone(module):
        return _padded_linear(module)
    if not isinstance(module, nn.Linear) or hook_count(module) != getattr(module, "_chorus_hooks", None):
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
            return refine_top_logits(F.linear(x.to(INT4_ACTIVATION_DTYPE), weight).to(out_dtype), x, weight)

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
        and hook_count(module) == (0, 0)
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
