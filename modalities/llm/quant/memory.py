"""What a (possibly quantized) model holds and where: weight bytes, device, activation dtype."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from modalities.llm.quant.w8a8 import Int8Linear


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
