"""The batched engine's forward on ONNX Runtime (`OnnxForward`): the same contract as `LlamaForward`.

The graph is the one `modalities.llm.onnx_export` writes: `inputs_embeds [B, S, H]`,
`attention_mask [B, T]`, `logits_index [K]`, one past K and V per layer; out `logits [K, V]` and the
present K/V. Attention is ONNX Runtime's `GroupQueryAttention`, which reads each row's length from
the mask (`seqlens_k` = ones - 1; `T` is the longest) and applies rotary itself at those positions.

The K/V live in the engine's `SlotCache` (torch tensors, `[rows, kv_heads, capacity, head_dim]` per
layer): each call binds a layer's rows as both the past input and the present output (I/O binding
on their memory: `GroupQueryAttention` then writes the new positions in place, the layout
onnxruntime-genai calls past_present_share_buffer), so no step allocates or copies the cache. The
logits go into a buffer kept between steps. Row b of a step holds its cached positions
`0..positions[b]-1` and writes position `positions[b]`: ragged lengths are the mask's business,
exactly like the torch forward's.

Prefill: prompts without a cached prefix run as one right-padded batch (a padded row writes junk
past its length into its own row, which nothing reads: the mask stops at the length and decode
overwrites those positions); a prompt continuing a cached prefix (prefix cache or an earlier
chunk) runs on its own, as `GroupQueryAttention`'s "subsequent prompt" (its positions follow the
row's length). Embeddings for decode come from the torch embedding table the runtime holds anyway
(for splicing media into prompts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modalities.llm.engine.slots import SlotCache

__all__ = ["OnnxForward", "session_options"]

_NP = {torch.float32: np.float32, torch.int64: np.int64}


def session_options(threads: int | None):
    """CPU session options: `threads` intra-op threads (None: every CPU this process may run on)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads wait on the next op by burning a core: with the encoders in the same machine
    # that core is taken from them (and from us when they run), so idle threads sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxForward:
    """Prefill and batched decode of an exported model (`onnx_export`) with the engine's `SlotCache`."""

    def __init__(self, model_dir: Path | str, embedding: nn.Embedding, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        model_dir = Path(model_dir)
        config = json.loads((model_dir / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        self.num_heads = decoder["num_attention_heads"]
        self.num_kv_heads = decoder["num_key_value_heads"]
        self.head_dim = decoder["head_size"]
        self.hidden_size = decoder["hidden_size"]
        self.num_layers = decoder["num_hidden_layers"]
        self.vocab_size = config["vocab_size"]
        self.max_positions = config["context_length"]
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        if embedding.embedding_dim != self.hidden_size:
            raise ValueError(f"embedding width {embedding.embedding_dim} != the ONNX model's {self.hidden_size}")
        self.embed_tokens = embedding
        self.weight_bytes = sum(f.stat().st_size for f in model_dir.glob("model.onnx*"))
        self.session = ort.InferenceSession(
            str(model_dir / decoder["filename"]), session_options(threads), providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self.session.get_inputs()}
        if "logits_index" not in names or "inputs_embeds" not in names:
            raise ValueError(f"{model_dir} is not a Chorus ONNX export (re-run `chorus models prepare`)")
        self._past = [(f"past_key_values.{i}.key", f"past_key_values.{i}.value") for i in range(self.num_layers)]
        self._present = [(f"present.{i}.key", f"present.{i}.value") for i in range(self.num_layers)]
        self._logits = torch.empty(0, self.vocab_size)
        # I/O bindings by (cache version, first row, rows): a step usually reuses the last one; a
        # step split into several forwards (seeded rows decode alone) reuses one per group.
        self._bindings: dict[tuple, object] = {}
        self._inputs: tuple[torch.Tensor, ...] = ()

    def prefill(
        self, prompts: list[torch.Tensor], cache: SlotCache, first_row: int, cached: list[int] | None = None
    ) -> torch.Tensor:
        """`LlamaForward.prefill`'s contract: prompt i (`[1, L_i, H]`) into row `first_row + i` after
        its `cached[i]` positions; returns `[k, V]` logits for each prompt's last position."""
        cached = cached or [0] * len(prompts)
        if not any(cached):
            return self._run_fresh(prompts, cache, first_row)
        rows = [self._run_continuation(p, cache, first_row + i, past) for i, (p, past) in enumerate(zip(prompts, cached))]
        return torch.cat(rows)  # each run's logits were copied out of the shared buffer

    def decode(
        self, token_ids: torch.Tensor, positions: torch.Tensor, span: int, cache: SlotCache, first_row: int = 0
    ) -> torch.Tensor:
        """One token for each of the B cache rows from `first_row` on (`LlamaForward.decode`'s contract): `[B, V]`."""
        batch = token_ids.shape[0]
        with torch.no_grad():
            embeds = self.embed_tokens(token_ids).to(self.dtype).unsqueeze(1).contiguous()
        mask = (torch.arange(span) <= positions.unsqueeze(1)).to(torch.int64)
        index = torch.arange(batch, dtype=torch.int64)
        return self._run(embeds, mask, index, cache, first_row, batch)

    def score(self, embeds: torch.Tensor) -> torch.Tensor:
        """Logits at every position of one prompt `[1, L, H]` (`[L, V]`), in a scratch cache: what
        teacher-forced agreement and log-probabilities of a given answer need."""
        length = embeds.shape[1]
        cache = SlotCache(
            self.num_layers, self.num_kv_heads, self.head_dim, max_rows=1, max_length=length,
            dtype=self.dtype, device=self.device, min_capacity=length,
        )  # fmt: skip
        cache.reserve(1, length)
        mask = torch.ones(1, length, dtype=torch.int64)
        index = torch.arange(length, dtype=torch.int64)
        with torch.no_grad():
            return self._run(embeds.to(self.dtype).contiguous(), mask, index, cache, 0, 1).clone()

    def _run_fresh(self, prompts: list[torch.Tensor], cache: SlotCache, first_row: int) -> torch.Tensor:
        lengths = [p.shape[1] for p in prompts]
        longest = max(lengths)
        if len(prompts) == 1:
            embeds = prompts[0].to(self.dtype).contiguous()
        else:
            embeds = torch.zeros(len(prompts), longest, self.hidden_size, dtype=self.dtype)
            for row, prompt in enumerate(prompts):
                embeds[row, : prompt.shape[1]] = prompt[0]
        mask = (torch.arange(longest) < torch.tensor(lengths).unsqueeze(1)).to(torch.int64)
        index = torch.tensor([row * longest + length - 1 for row, length in enumerate(lengths)], dtype=torch.int64)
        return self._run(embeds, mask, index, cache, first_row, len(prompts)).clone()

    def _run_continuation(self, prompt: torch.Tensor, cache: SlotCache, row: int, past: int) -> torch.Tensor:
        length = prompt.shape[1]
        mask = torch.ones(1, past + length, dtype=torch.int64)
        index = torch.tensor([length - 1], dtype=torch.int64)
        return self._run(prompt.to(self.dtype).contiguous(), mask, index, cache, row, 1).clone()

    def _run(
        self, embeds: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, cache: SlotCache, first: int, count: int
    ) -> torch.Tensor:
        """One session run over cache rows `first..first+count-1`; returns `[len(index), V]` logits in a
        buffer the next run overwrites (decode samples from it at once; prefill copies)."""
        if mask.shape[1] > cache.capacity:
            raise ValueError(f"{mask.shape[1]} positions do not fit the cache's {cache.capacity}")
        binding = self._cache_binding(cache, first, count)
        _bind(binding.bind_input, "inputs_embeds", embeds)
        _bind(binding.bind_input, "attention_mask", mask)
        _bind(binding.bind_input, "logits_index", index)
        wanted = index.shape[0]
        if self._logits.shape[0] < wanted:
            self._logits = torch.empty(wanted, self.vocab_size, dtype=torch.float32)
        logits = self._logits[:wanted]
        _bind(binding.bind_output, "logits", logits)
        self._inputs = (embeds, mask, index)  # alive until the next run replaces them
        self.session.run_with_iobinding(binding)
        return logits

    def _cache_binding(self, cache: SlotCache, first: int, count: int):
        """An I/O binding with rows `first..first+count-1` of every layer's K and V bound as past and
        present; kept while the cache's tensors and the rows stay the same (a decode step usually
        only rebinds its three small inputs and the logits)."""
        key = (cache.version, first, count)  # versions are unique across caches: no stale memory
        binding = self._bindings.get(key)
        if binding is not None:
            return binding
        if len(self._bindings) >= MAX_BINDINGS or any(k[0] != cache.version for k in self._bindings):
            self._bindings.clear()  # a new cache (version): the old bindings point at freed memory
        binding = self.session.io_binding()
        for (past_k, past_v), (present_k, present_v), keys, values in zip(
            self._past, self._present, cache.keys, cache.values
        ):
            k, v = keys[first : first + count], values[first : first + count]
            _bind(binding.bind_input, past_k, k)
            _bind(binding.bind_input, past_v, v)
            _bind(binding.bind_output, present_k, k)
            _bind(binding.bind_output, present_v, v)
        self._bindings[key] = binding
        return binding


MAX_BINDINGS = 2 * 8 + 1  # enough for a step of 8 rows split into groups, twice over


def _bind(bind, name: str, tensor: torch.Tensor) -> None:
    if not tensor.is_contiguous():
        raise ValueError(f"{name} must be contiguous to bind")
    bind(name, "cpu", 0, _NP[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
