"""Quantization of a causal LM: `quantize_model` applies one `LLMConfig.quantization` mode.

- `int8`: torchao `Int8WeightOnlyConfig` (per-row scales) on the linear layers; runs anywhere.
- `int4`: group-wise 4-bit weights through the tinygemm kernels (`int4` has the details).
- `w8a8`: int8 weights and per-token int8 activations through FBGEMM, SmoothQuant-calibrated
  (CPU, float32 models; `w8a8` has the details, including its embedding and head).

A tied output head (`lm_head` sharing the input embedding's weight) stays tied in int8 and int4
(quantizing it would untie it: the embedding stays and a quantized copy is added).
int8: the head stays in float. torchao's eager int8 matmul converts the whole weight to float on
every call, which on the head costs more than it saves (decode 9 vs 20 tok/s with and without it)
and adds 28 MB. int4: the head is stored in bfloat16, or, on CPU with FBGEMM, with the embedding
as one int8 block table (`Int8BlockEmbedding` + `Int8Head`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modalities.llm.config import QUANTIZATIONS, Quantization
from modalities.llm.quant import w8a8 as llm_w8a8
from modalities.llm.quant.int4 import bfloat16_tied_head, quantize_int4_layers
from modalities.llm.quant.report import QuantizationReport, UnsupportedQuantization
from modalities.llm.quant.w8a8 import Int8BlockEmbedding, Int8Head, Int8Linear

TIED_HEAD_INT8_REASON = "tied to the input embedding; torchao's eager int8 matmul is slower than float on it"
TIED_HEAD_INT4_REASON = (
    "tied to the input embedding; kept in bfloat16, since a 4-bit head flips most of the greedy tokens int4 changes"
)
TIED_HEAD_INT4_INT8_REASON = (
    "tied to the input embedding; stored as int8 blocks of 32 (the head multiplies in int8 through FBGEMM, each "
    "row's top 64 logits recomputed in float32), since a 4-bit head flips most of the greedy tokens int4 changes"
)


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
    if mode == "w8a8":
        _quantize_w8a8(model, calibration, report)
    elif mode in ("int8", "int4"):
        linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
        tied_head = _tied_output_head(model)
        tied_reason = TIED_HEAD_INT8_REASON if mode == "int8" else TIED_HEAD_INT4_REASON
        report.skipped = {name: tied_reason for name, module in linears.items() if module is tied_head}
        untied = {name: module for name, module in linears.items() if name not in report.skipped}
        if mode == "int8":
            _quantize_int8(model, untied, report)
        else:
            _quantize_int4(model, untied, tied_head, report)
    return report


def _quantize_int8(model: nn.Module, linears: dict[str, nn.Linear], report: QuantizationReport) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    report.quantized = list(linears)
    targets = set(linears)
    # set_inductor_config=False: don't rewrite global inductor settings as a side effect of loading.
    quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=lambda m, fqn: fqn in targets)


def _quantize_int4(
    model: nn.Module, linears: dict[str, nn.Linear], tied_head: nn.Module | None, report: QuantizationReport
) -> None:
    """The int4 layers, then the tied head (if any): an int8 block table where FBGEMM runs, else bfloat16."""
    quantize_int4_layers(linears, report)
    if tied_head is None:
        return
    head_name = next(name for name, module in model.named_modules() if module is tied_head)  # before it is replaced
    if _int8_tied_head(model, tied_head):
        report.skipped[head_name] = TIED_HEAD_INT4_INT8_REASON
    else:
        bfloat16_tied_head(model, tied_head)


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
