"""The part of a causal LM the ONNX engine still runs in torch: its token embedding table.

`EmbeddingModel` stands in for the transformers model in `LLMRuntime` when `engine: onnx` runs the
layers: it has the model's `config`, `generation_config` (EOS ids) and `get_input_embeddings()`
(prompt embeddings, media splicing, each decode step's token), and nothing else: the float weights
of the layers are never read. The table is kept as int8 blocks with a float32 scale each
(`Int8BlockEmbedding`): SmolLM2's GGUF stores it as Q8_0 blocks, so the rows come back exactly, in
30 MB instead of 113 MB (538 MB for the whole float model).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from modalities.heap import trim_heap
from modalities.llm.quant.w8a8 import Int8BlockEmbedding

__all__ = ["EMBEDDING_KEYS", "EmbeddingModel", "load_embedding_model"]

# Where Llama-family checkpoints keep the token embedding.
EMBEDDING_KEYS = ("model.embed_tokens.weight", "embed_tokens.weight", "model.model.embed_tokens.weight")


class EmbeddingModel(nn.Module):
    """A model's config, generation config and token embedding, and no layers."""

    def __init__(self, config, embedding: nn.Embedding, generation_config=None) -> None:
        super().__init__()
        self.config = config
        self.generation_config = generation_config
        self.embed_tokens = embedding

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def forward(self, *args, **kwargs):
        raise NotImplementedError("the layers of this model run in ONNX Runtime (llm.engine 'onnx'); use the engine")


def load_embedding_model(model_dir: Path):
    """(tokenizer, `EmbeddingModel`) from a local transformers directory, reading one tensor."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    try:
        generation_config = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:
        generation_config = GenerationConfig.from_model_config(config)
    embedding = Int8BlockEmbedding(_read_embedding(Path(model_dir)))
    trim_heap()  # the float table was read and dropped: hand its pages back
    return tokenizer, EmbeddingModel(config, embedding, generation_config).eval()


def _read_embedding(model_dir: Path) -> torch.Tensor:
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        candidates = [(model_dir / weight_map[key], key) for key in EMBEDDING_KEYS if key in weight_map]
    else:
        candidates = [(path, key) for path in sorted(model_dir.glob("*.safetensors")) for key in EMBEDDING_KEYS]
    for path, key in candidates:
        with safe_open(str(path), framework="pt") as handle:
            if key in handle.keys():
                return handle.get_tensor(key)
    raise FileNotFoundError(f"no token embedding ({' or '.join(EMBEDDING_KEYS)}) in {model_dir}'s safetensors files")
