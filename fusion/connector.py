"""DiVA's connector: Whisper's own text decoder reads the encoder frames through learned queries.

DiVA (Held et al., arXiv 2410.02678) uses the Whisper decoder as a Q-Former: query vectors take the
place of text tokens, every block cross-attends to the frozen encoder's frames, and a linear layer
maps the decoder's last states into the LLM's embedding space. Starting from Whisper's trained
decoder weights, its states live where its text predictions do (Whisper ties the decoder's output
to its token table), a text-aligned start the frame-stacking projector lacks.

Here the query count follows the clip, one query per `stack` frames (the same soft-token count as
`stack{k}_swiglu`, so embed mode's prompt length does not change), and the queries attend to each
other both ways (no causal mask: there is no text to keep causal). With `window` > 0 query i reads
only frames within `window` of its own `stack` frames (a window-level Q-Former, as in SALMONN):
locality the frame-stacking projector has by construction and a whole-clip Q-Former must learn
from far more speech than this corpus holds (measured: CTC 7.1 after 40 alignment steps, where the
stacking projector had 4.7). Padded frames of a batch are
masked out of the cross-attention, so a clip gives the same tokens alone or in a batch.

- `WhisperDecoderConnector(in_dim, out_dim, stack, n_layer, n_head)`: forward `[B, T, in_dim]`
  (+ `lengths`) → `[B, ceil(T / stack), out_dim]`;
- `init_from_whisper(decoder)`: copy a `whisper.model.TextDecoder`'s blocks and final norm; queries =
  its positional embeddings + its mean token embedding;
- `vocabulary_map(...)`: least squares from Whisper's token table to the LLM's over the tokens both
  vocabularies spell the same (the starting `linear_2`). Measured on the packaged pair: Whisper's
  token rows land on the right LLM tokens (27,325 shared); the decoder's *states* do not, before
  training — Whisper's decoder was never run on queries in place of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MAX_QUERIES = 448  # Whisper's text context: its positional table has this many rows


class WhisperDecoderConnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stack: int, n_layer: int = 6, n_head: int = 8, window: int = 0) -> None:
        from whisper.model import LayerNorm, ResidualAttentionBlock

        super().__init__()
        if stack < 1:
            raise ValueError(f"stack must be >= 1, got {stack}")
        if in_dim % n_head:
            raise ValueError(f"in_dim {in_dim} is not a multiple of n_head {n_head}")
        self.in_dim, self.out_dim, self.stack = in_dim, out_dim, stack
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.n_layer, self.n_head, self.window = n_layer, n_head, window
        self.queries = nn.Parameter(torch.randn(MAX_QUERIES, in_dim) * 0.02)
        self.blocks = nn.ModuleList(ResidualAttentionBlock(in_dim, n_head, cross_attention=True) for _ in range(n_layer))
        self.ln = LayerNorm(in_dim)
        self.linear_2 = nn.Linear(in_dim, out_dim, bias=False)  # named like the projectors' last layer
        # A fixed output scale (set by `match_output_norm`), so that AdamW's steps stay in proportion
        # to `linear_2`'s weights: Whisper's normed states are ~100× the LLM embeddings' RMS.
        self.register_buffer("output_scale", torch.tensor(1.0))

    def spec(self) -> dict[str, int]:
        """What `build_projector` needs besides the kind."""
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "n_layer": self.n_layer, "n_head": self.n_head, "window": self.window}

    def num_output_tokens(self, num_input_frames: int) -> int:
        return -(-num_input_frames // self.stack)

    def forward(self, frames: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        assert frames.dim() == 3 and frames.shape[-1] == self.in_dim, (
            f"expected [B, T, {self.in_dim}], got {tuple(frames.shape)}"
        )
        batch, length, _ = frames.shape
        count = self.num_output_tokens(length)
        if count > MAX_QUERIES:
            raise ValueError(f"{length} frames need {count} queries; this connector has {MAX_QUERIES}")
        x = self.queries[:count].unsqueeze(0).expand(batch, -1, -1)
        query_mask = frame_mask = None
        if lengths is not None and min(lengths) < length:
            n = torch.tensor(list(lengths), device=frames.device)
            frame_mask = (torch.arange(length, device=frames.device)[None] < n[:, None])[:, None, None, :]
            counts = -(-n // self.stack)
            query_mask = (torch.arange(count, device=frames.device)[None] < counts[:, None])[:, None, None, :]
        if self.window:
            local = self._window_mask(count, length, frames.device)[None, None]
            frame_mask = local if frame_mask is None else local & frame_mask
            # A padding query may see no real frame: let it see all (its token is cut off; no NaN).
            frame_mask = frame_mask | ~frame_mask.any(-1, keepdim=True)
        for block in self.blocks:
            normed = block.attn_ln(x)
            x = x + _attention(block.attn, normed, normed, query_mask, self.n_head)
            x = x + _attention(block.cross_attn, block.cross_attn_ln(x), frames, frame_mask, self.n_head)
            x = x + block.mlp(block.mlp_ln(x))
        return self.linear_2(self.ln(x)) * self.output_scale

    def _window_mask(self, count: int, length: int, device: torch.device) -> torch.Tensor:
        """`[count, length]`: query i reads its own `stack` frames and `window` frames each side."""
        start = torch.arange(count, device=device)[:, None] * self.stack
        frame = torch.arange(length, device=device)[None]
        return (frame >= start - self.window) & (frame < start + self.stack + self.window)

    @torch.no_grad()
    def init_from_whisper(self, decoder: nn.Module) -> None:
        """Start from a `whisper.model.TextDecoder`: its blocks, its final norm, queries from its tables."""
        self.blocks.load_state_dict(decoder.blocks.state_dict())
        self.ln.load_state_dict(decoder.ln.state_dict())
        table = decoder.token_embedding.weight.float()
        self.queries.copy_(decoder.positional_embedding.float()[:MAX_QUERIES] + table.mean(0))


def _attention(attn: nn.Module, x: torch.Tensor, source: torch.Tensor, key_mask: torch.Tensor | None, n_head: int) -> torch.Tensor:
    """A `whisper.model.MultiHeadAttention`'s weights applied with a key-padding mask (Whisper's own
    forward masks only causally); the same scaling (1/sqrt(head dim))."""
    q, k, v = attn.query(x), attn.key(source), attn.value(source)
    batch, n_q, dim = q.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, t.shape[1], n_head, dim // n_head).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=key_mask)
    return attn.out(out.transpose(1, 2).reshape(batch, n_q, dim))


@torch.no_grad()
def vocabulary_map(whisper_table: torch.Tensor, whisper_strings: Sequence[str | None], llm_table: torch.Tensor, llm_strings: Sequence[str | None]) -> tuple[torch.Tensor, int]:
    """Least-squares `M [d_whisper, d_llm]` with `whisper_table[w] @ M ≈ llm_table[v]` over the tokens
    spelled the same in both vocabularies (`None`: a token with no plain spelling); the pair count.
    Fewer pairs than dimensions give the minimum-norm solution."""
    llm_index = {s: i for i, s in enumerate(llm_strings) if s}
    pairs = [(w, llm_index[s]) for w, s in enumerate(whisper_strings) if s and s in llm_index]
    if not pairs:
        raise ValueError("the two vocabularies spell no token alike")
    source = whisper_table[[w for w, _ in pairs]].float()
    target = llm_table[[v for _, v in pairs]].float()
    return torch.linalg.lstsq(source, target).solution, len(pairs)


def start_connector(connector: WhisperDecoderConnector, whisper_model: nn.Module, llm_table: torch.Tensor, llm_tokenizer) -> int:
    """A fresh connector from a loaded `whisper.model.Whisper` and the LLM's token table and
    tokenizer: `init_from_whisper`, then `linear_2` from `vocabulary_map`. The shared-token count."""
    from whisper.tokenizer import get_tokenizer

    connector.init_from_whisper(whisper_model.decoder)
    encoding = get_tokenizer(multilingual=whisper_model.is_multilingual).encoding
    whisper_table = whisper_model.decoder.token_embedding.weight
    mapping, shared = vocabulary_map(
        whisper_table, [_spelling(lambda i: encoding.decode_single_token_bytes(i).decode("utf-8"), i) for i in range(whisper_table.shape[0])],
        llm_table, [_spelling(lambda i: llm_tokenizer.decode([i]), i) for i in range(llm_table.shape[0])],
    )
    with torch.no_grad():
        connector.linear_2.weight.copy_(mapping.T.to(connector.linear_2.weight))
    return shared


def _spelling(decode, i: int) -> str | None:
    """Token `i`'s text, or None (a special token, a byte fragment, nothing visible)."""
    try:
        text = decode(i)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    return text if text.strip() and "\ufffd" not in text else None
