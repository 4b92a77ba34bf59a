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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modalities.heap import trim_heap
from modalities.llm.quant.w8a8 import Int8BlockEmbedding

__all__ = ["EMBEDDING_KEYS", "EmbeddingModel", "load_embedding_model"]

# Where Llama-family checkpoints keep the token embedding.
EMBEDDING_KEYS = ("model.embed_tokens.weight", "embed_tokens.weight", "model.model.embed_tokens.weight")
SLICE_ROWS = 4096  # rows read and quantized at a time: the float table never exists whole


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


@dataclass(frozen=True)
class ModelConfig:
    """The fields of a transformers `config.json` the runtime reads, without transformers' config
    classes (importing them pulls in its image and video utilities and torchvision: ~180 MB)."""

    model_type: str | None
    architectures: list[str]
    max_position_embeddings: int
    hidden_size: int
    vocab_size: int
    eos_token_id: int | list[int] | None = None

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        raw = json.loads((model_dir / "config.json").read_text())
        return cls(raw.get("model_type"), list(raw.get("architectures") or []), int(raw["max_position_embeddings"]),
                   int(raw["hidden_size"]), int(raw["vocab_size"]), raw.get("eos_token_id"))


@dataclass(frozen=True)
class EosConfig:
    """`generation_config.json`'s EOS ids (what `LLMRuntime` reads from a generation config)."""

    eos_token_id: int | list[int] | None

    @classmethod
    def read(cls, model_dir: Path, config: ModelConfig) -> EosConfig:
        path = model_dir / "generation_config.json"
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return cls(eos)
        return cls(config.eos_token_id)


# Tokenizer classes that are a tokenizer.json read by the `tokenizers` library: loaded as
# PreTrainedTokenizerFast (the same class in transformers 5) without AutoTokenizer's imports (~200 MB).
FAST_TOKENIZER_CLASSES = {None, "TokenizersBackend", "PreTrainedTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast",
                          "LlamaTokenizer", "LlamaTokenizerFast"}


def load_tokenizer(model_dir: Path):
    """The model's tokenizer, without AutoTokenizer's imports where it is a plain tokenizer.json."""
    tokenizer_config = model_dir / "tokenizer_config.json"
    declared = json.loads(tokenizer_config.read_text()).get("tokenizer_class") if tokenizer_config.is_file() else None
    if (model_dir / "tokenizer.json").is_file() and declared in FAST_TOKENIZER_CLASSES:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(model_dir, local_files_only=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def load_embedding_model(model_dir: Path):
    """(tokenizer, `EmbeddingModel`) from a local transformers directory, reading one tensor."""
    model_dir = Path(model_dir)
    config = ModelConfig.read(model_dir)
    tokenizer = load_tokenizer(model_dir)
    embedding = _read_embedding(model_dir)
    trim_heap()  # slices were read and dropped: hand their pages back
    return tokenizer, EmbeddingModel(config, embedding, EosConfig.read(model_dir, config)).eval()


def _read_embedding(model_dir: Path) -> Int8BlockEmbedding:
    """The token embedding as int8 blocks, read and quantized `SLICE_ROWS` rows at a time."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        candidates = [(model_dir / weight_map[key], key) for key in EMBEDDING_KEYS if key in weight_map]
    else:
        candidates = [(path, key) for path in sorted(model_dir.glob("*.safetensors")) for key in EMBEDDING_KEYS]
    for path, key in candidates:
        with safe_open(str(path), framework="pt") as handle:
            if key not in handle.keys():
                continue
            table = handle.get_slice(key)
            rows = table.get_shape()[0]
            parts = [Int8BlockEmbedding.quantize_rows(table[start : start + SLICE_ROWS]) for start in range(0, rows, SLICE_ROWS)]
            return Int8BlockEmbedding(parts=(torch.cat([q for q, _ in parts]), torch.cat([s for _, s in parts])))
    raise FileNotFoundError(f"no token embedding ({' or '.join(EMBEDDING_KEYS)}) in {model_dir}'s safetensors files")
