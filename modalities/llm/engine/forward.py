"""The batched engine's own forward for Llama-architecture models (`LlamaForward`).

It runs the HF model's own weights and submodules (embedding, norms, q/k/v/o projections, MLP,
head, rotary embedding) and skips transformers' generic per-call machinery (masks, cache objects,
output dataclasses, kwargs plumbing). Linears go through `quant.fast.fast_linear` (int4 layers call
the kernel directly, without tensor-subclass dispatch or cast hooks; anything else is called as a
module, hooks and all); Llama's RMSNorm is one `F.rms_norm`. Other architectures are refused with a
`ValueError` naming the supported ones (`config.SUPPORTED_ARCHITECTURES`; the eager loop runs them).
K/V are read from and written to a `SlotCache`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modalities.llm.config import check_batched_architecture
from modalities.llm.engine.slots import SlotCache
from modalities.llm.quant.fast import fast_linear, fast_linears
from modalities.llm.quant.memory import compute_dtype, module_device

__all__ = ["LlamaForward"]

# RoPE variants whose inverse frequencies do not depend on the sequence length (so one table serves
# rows at different positions); "dynamic" and friends rescale with the longest sequence seen.
STATIC_ROPE_TYPES = ("default", "linear", "llama3")


class LlamaForward:
    """Prefill and batched decode for a Llama-architecture `*ForCausalLM`, reusing its modules."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        body = _llama_body(model)
        self.embed_tokens = body.embed_tokens
        self.device = module_device(body.embed_tokens)
        self.max_positions = config.max_position_embeddings
        self.rotary_emb = body.rotary_emb
        self.dtype = dtype = compute_dtype(model)  # the activations' (a stored weight's may differ)
        self.norm = _fast_norm(body.norm, dtype)
        self.lm_head = fast_linear(model.lm_head)
        self.layers = [_fast_layer(layer, dtype) for layer in body.layers[: config.num_hidden_layers]]
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scale = body.layers[0].self_attn.scaling
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads} query heads are not a multiple of {self.num_kv_heads} KV heads")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def prefill(
        self, prompts: list[torch.Tensor], cache: SlotCache, first_row: int, cached: list[int] | None = None
    ) -> torch.Tensor:
        """Run prompts (each `[1, L_i, H]`) packed into one sequence; prompt i's K/V go to cache row
        `first_row + i` at positions `cached[i]..cached[i]+L_i-1`, after the `cached[i]` positions
        of its prefix already in that row (the prefix cache put them there; default: none).

        Packing shares each weight read between the prompts (the linears see one `[N, H]` matrix);
        attention runs per prompt, so prompts never see each other, and a prompt's attention is the
        one it gets alone: the plain causal kernel without a cached prefix, else its new positions
        against the row's cached and new K/V under a causal mask. (A block-diagonal mask over the
        packed sequence did the same in one call at 3.5x the time for 8 x 42 tokens: the kernel
        computes every masked block.) Returns `[k, V]` logits for the position after each prompt
        (only those positions reach the head).
        """
        lengths = [p.shape[1] for p in prompts]
        cached = cached or [0] * len(prompts)
        total = sum(lengths)
        device = prompts[0].device
        x = torch.cat(prompts, dim=1) if len(prompts) > 1 else prompts[0]
        positions = torch.cat([torch.arange(c, c + n, device=device) for c, n in zip(cached, lengths)]).unsqueeze(0)
        cos, sin = _rope_tables(*self.rotary_emb(x, positions))  # [1, 1, N, D]: broadcast over heads
        starts = [sum(lengths[:i]) for i in range(len(prompts))]
        spans = [
            _Span(start, length, first_row + i, past, _prefix_mask(past, length, device) if past else None)
            for i, (start, length, past) in enumerate(zip(starts, lengths, cached))
        ]
        for index, (ln1, qkv, o_proj, ln2, mlp) in enumerate(self.layers):
            q, k, v = qkv(ln1(x))
            q = _rope(q.view(1, total, self.num_heads, self.head_dim).transpose(1, 2), cos, sin)
            k = _rope(k.view(1, total, self.num_kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            v = v.view(1, total, self.num_kv_heads, self.head_dim).transpose(1, 2)
            keys, values = cache.keys[index], cache.values[index]
            for span in spans:
                keys[span.row, :, span.past : span.end] = k[0, :, span.start : span.start + span.length]
                values[span.row, :, span.past : span.end] = v[0, :, span.start : span.start + span.length]
            parts = [self._attention(q, k, v, keys, values, span) for span in spans]
            attn = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
            x = x + o_proj(attn.transpose(1, 2).reshape(1, total, -1))
            x = x + mlp(ln2(x))
        last = torch.tensor([start + length - 1 for start, length in zip(starts, lengths)], device=device)
        return self.lm_head(self.norm(x[0, last]))

    def _attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, span: _Span
    ) -> torch.Tensor:
        """One prompt's causal attention: its slice of the packed `[1, heads, N, D]` q/k/v, or, after
        a cached prefix, its queries against its cache row (prefix and new positions, masked)."""
        query = q[:, :, span.start : span.start + span.length]
        if not span.past:
            end = span.start + span.length
            return F.scaled_dot_product_attention(
                query, k[:, :, span.start : end], v[:, :, span.start : end], is_causal=True, scale=self.scale, enable_gqa=True
            )
        row = slice(span.row, span.row + 1)
        return F.scaled_dot_product_attention(
            query, keys[row, :, : span.end], values[row, :, : span.end], attn_mask=span.mask, scale=self.scale, enable_gqa=True
        )

    def decode(
        self, token_ids: torch.Tensor, positions: torch.Tensor, span: int, cache: SlotCache, first_row: int = 0
    ) -> torch.Tensor:
        """One token for each of the B cache rows from `first_row` on.

        token_ids, positions: `[B]` long; row b's token sits at `positions[b]` (= its cached length).
        span: `max(positions) + 1`, the cache length attended (a Python int: no host sync here).
        Returns `[B, V]` logits.
        """
        batch = token_ids.shape[0]
        x = self.embed_tokens(token_ids).unsqueeze(1)  # [B, 1, H]
        cos, sin = _rope_tables(*self.rotary_emb(x, positions.unsqueeze(1)))  # [B, 1, 1, D]
        rows = torch.arange(first_row, first_row + batch, device=token_ids.device)
        # Row b sees its own cached positions 0..positions[b] and nothing past them.
        mask = (torch.arange(span, device=token_ids.device) <= positions.unsqueeze(1)).view(batch, 1, 1, span)
        for index, (ln1, qkv, o_proj, ln2, mlp) in enumerate(self.layers):
            q, k, v = qkv(ln1(x))
            q = _rope(q.view(batch, 1, self.num_heads, self.head_dim).transpose(1, 2), cos, sin)
            k = _rope(k.view(batch, 1, self.num_kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            v = v.view(batch, self.num_kv_heads, self.head_dim)
            keys, values = cache.keys[index], cache.values[index]
            keys[rows, :, positions] = k[:, :, 0]
            values[rows, :, positions] = v
            attn = F.scaled_dot_product_attention(
                q,
                keys[first_row : first_row + batch, :, :span],
                values[first_row : first_row + batch, :, :span],
                attn_mask=mask,
                scale=self.scale,
                enable_gqa=True,
            )
            x = x + o_proj(attn.transpose(1, 2).reshape(batch, 1, -1))
            x = x + mlp(ln2(x))
        return self.lm_head(self.norm(x[:, 0]))


def _llama_body(model: nn.Module) -> nn.Module:
    """`model.model`, checked to be a Llama decoder this forward can run (ValueError saying why not)."""
    check_batched_architecture(getattr(model.config, "model_type", None), [type(model).__name__])
    body = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if body is None or not all(hasattr(body, name) for name in needed) or not hasattr(model, "lm_head"):
        raise ValueError(f"{type(model).__name__} does not have the Llama module layout the batched engine needs")
    rope_type = getattr(body.rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise ValueError(f"the batched engine supports RoPE types {STATIC_ROPE_TYPES}, not {rope_type!r}")
    return body


def _fast_layer(layer: nn.Module, dtype: torch.dtype) -> tuple[Callable, ...]:
    """One decoder layer as (input norm, q/k/v, o_proj, post-attention norm, MLP) callables."""
    attention = layer.self_attn
    return (
        _fast_norm(layer.input_layernorm, dtype),
        fast_linears([attention.q_proj, attention.k_proj, attention.v_proj]),
        fast_linear(attention.o_proj),
        _fast_norm(layer.post_attention_layernorm, dtype),
        _fast_mlp(layer.mlp),
    )


def _fast_norm(module: nn.Module, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """HF's Llama RMSNorm as one `F.rms_norm` call (float32 activations: the same arithmetic, equal
    bit for bit where we compared, in one call instead of seven); any other norm, dtype or a hooked
    module is called as is.
    """
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    plain = not (module._forward_hooks or module._forward_pre_hooks)
    if type(module).__name__ != "LlamaRMSNorm" or not plain or eps is None or dtype != torch.float32:
        return module
    if weight is None or weight.dtype != torch.float32:
        return module
    shape = (weight.shape[-1],)
    return lambda x: F.rms_norm(x, shape, weight, eps)


def _fast_mlp(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The gated MLP `down(act(gate(x)) * up(x))` over `fast_linear`s (the module itself if it isn't one)."""
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    if not all(hasattr(module, name) for name in parts) or module._forward_hooks or module._forward_pre_hooks:
        return module
    gate_up, down = fast_linears([module.gate_proj, module.up_proj]), fast_linear(module.down_proj)
    act = module.act_fn

    def mlp(x: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up(x)
        return down(act(gate) * up)

    return mlp


def _rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for `_rope`, made once per forward: a head axis to broadcast over, and sin with
    the first half negated (HF's rotate_half sign, moved onto the table)."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.unsqueeze(-3), signed.unsqueeze(-3)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, HF's convention: x*cos + rotate_half(x)*sin, where rotate_half(x)
    = cat(-x2, x1) = roll(x, half) with the first half negated: the sign lives in `signed_sin`
    (exact: negation commutes with the product), so it is 4 ops instead of 7 on each call."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


@dataclass(frozen=True)
class _Span:
    """One prompt in a packed prefill: its new positions' place in the pack, its cache row, and the
    length of its cached prefix (`past`) with the mask its queries attend under then."""

    start: int
    length: int
    row: int
    past: int
    mask: torch.Tensor | None

    @property
    def end(self) -> int:
        return self.past + self.length


def _prefix_mask(past: int, length: int, device: torch.device) -> torch.Tensor:
    """`[length, past + length]`: new position i (at past + i) sees positions 0..past + i."""
    return torch.arange(past + length, device=device) <= torch.arange(past, past + length, device=device).unsqueeze(1)
