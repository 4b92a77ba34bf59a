"""Automatic prefix caching for the batched engine: the K/V of a prompt prefix seen before is copied
into a joining request's cache row instead of being computed again (vLLM's automatic prefix caching).

Where it pays: every chat through the OpenAI API starts with the same system prompt (SmolLM2's chat
template adds one when the client sends none: 24 of a short question's ~40 tokens), and a chat's
every turn re-sends the whole history before it. Only the new part of a prompt is prefilled.

Prompts are cut into blocks of `block_tokens` positions. A block's key hashes its input embeddings
chained to the previous block's key, so a key names the whole prefix up to the block's end: the K/V
at a position depend on every input before it and on nothing after it. Keys hash embeddings, not
token ids, so multimodal prompts are covered too (a projected image or clip is part of the key).
A block's value is its K and V for every layer, `[layers, 2, kv_heads, block, head_dim]`, held in
an LRU bounded by bytes (`FeatureCache`). A prompt reuses its longest cached chain of blocks, always
leaving at least its last position to compute (the first token's logits come from it).

Within a chain a parent is always more recently used than its descendants (matched blocks are
touched deepest first, new blocks stored deepest first), so eviction takes leaves before the
prefixes that other chains share.
"""

from __future__ import annotations

import hashlib

import torch

from modalities.feature_cache import FeatureCache

__all__ = ["DEFAULT_BLOCK_TOKENS", "PrefixCache"]

DEFAULT_BLOCK_TOKENS = 8
_DIGEST_BYTES = 16


class PrefixCache:
    """Block-chained prefix K/V, bounded by `max_bytes` (0: nothing is kept). Used by one engine thread."""

    def __init__(self, max_bytes: int, block_tokens: int = DEFAULT_BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        self.block_tokens = block_tokens
        self._blocks = FeatureCache(max_bytes)

    def keys(self, embeds: torch.Tensor) -> list[str]:
        """One key per full block of the prompt `[1, L, H]` (a partial last block has none)."""
        rows = embeds[0].detach().to("cpu").contiguous()
        data = rows.view(torch.uint8).view(rows.shape[0], -1)  # any dtype, bit for bit
        keys, parent = [], b""
        for start in range(0, rows.shape[0] - self.block_tokens + 1, self.block_tokens):
            digest = hashlib.blake2b(parent, digest_size=_DIGEST_BYTES)
            digest.update(data[start : start + self.block_tokens].numpy())
            parent = digest.digest()
            keys.append(parent.hex())
        return keys

    def lookup(self, keys: list[str], length: int) -> list[torch.Tensor]:
        """The longest cached chain of the prompt's blocks that leaves its last position uncached."""
        usable = min(len(keys), (length - 1) // self.block_tokens)
        found: list[torch.Tensor] = []
        for key in keys[:usable]:
            block = self._blocks.get(key)
            if block is None:
                break
            found.append(block)
        self._touch(keys[: len(found)])
        return found

    def store(self, keys: list[str], first: int, kv: torch.Tensor) -> None:
        """Keep blocks `first, first+1, ...` of a prompt from its K/V `[layers, 2, kv_heads, n, head_dim]`
        (n a multiple of the block size, starting at block `first`'s position)."""
        blocks = kv.split(self.block_tokens, dim=3)
        for key, block in reversed(list(zip(keys[first:], blocks))):
            if block.shape[3] == self.block_tokens:
                self._blocks.put(key, block.clone())  # its own storage: evicting it frees it
        self._touch(keys[:first])  # the reused parents stay younger than the new descendants

    def _touch(self, keys: list[str]) -> None:
        for key in reversed(keys):
            self._blocks.touch(key)

    @property
    def bytes(self) -> int:
        return self._blocks.stats().bytes
