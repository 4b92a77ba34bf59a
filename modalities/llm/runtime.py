"""The LLM decoder runtime: load (optionally quantized), embed, template, stream and generate.

`LLMRuntime` takes an already-built model and tokenizer (tests pass a tiny random Llama), or builds
them from an `LLMConfig` with `from_config`. Generation runs through a `DecodeLoop` (our own
prefill + per-token loop, not `model.generate`): by default the continuous-batching `BatchedEngine`
(concurrent streams share each decode step), or `EagerDecodeLoop` with `engine="eager"`. Text comes
out incrementally: multi-byte characters are released whole, and text that could still become a
stop string is held back.

Typical use (the fusion router splices media tokens into `inputs_embeds` first):

    llm = LLMRuntime.from_config(LLMConfig(quantization="int8"))
    ids = llm.chat_template([{"role": "user", "content": "Hi"}])
    for event in llm.stream(input_ids=ids, params=SamplingParams(temperature=0)):
        print(event.text, end="")
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from modalities.errors import InputError
from modalities.llm.config import PACKAGED, DType, LLMConfig, check_batched_architecture
from modalities.llm.decode import DecodeLoop, EagerDecodeLoop
from modalities.llm.detokenize import IncrementalDetokenizer, StopStringFilter
from modalities.llm.engine.batched import BatchedEngine, EngineStats
from modalities.llm.engine.stream import TokenStream
from modalities.llm.params import SamplingParams
from modalities.llm.quant import w8a8 as llm_w8a8
from modalities.llm.quant.core import quantize_model
from modalities.llm.quant.memory import compute_dtype, module_device, weight_bytes
from modalities.llm.quant.report import QuantizationReport
from modalities.llm.sampling import AnswerSampler, TokenLogprob

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["Completion", "EventStream", "FinishReason", "LLMConfig", "LLMRuntime", "SamplingParams", "TokenEvent"]

DTYPES: dict[DType, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# "name" or "org/name", e.g. "HuggingFaceTB/SmolLM2-360M-Instruct"; anything else must be a directory.
HUB_NAME = re.compile(r"\w[\w.-]*(/\w[\w.-]*)?")
CONTEXT_EXCEEDED_CODE = "context_length_exceeded"
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class TokenEvent:
    """One generated token and the text it releases (possibly "" while text is held back).

    The last event has `finish_reason` ("stop": EOS or a stop string; "length": max_tokens or the
    context window) and the token counts.
    """

    token_id: int
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprob: TokenLogprob | None = None  # with `SamplingParams.logprobs`


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # every sampled token, including a final EOS
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class EventStream(Iterator[TokenEvent]):
    """`LLMRuntime.stream`'s answer: the token events of one prompt's completion, in order.

    `close()`, on the consumer's thread, ends the stream and frees its sequence. `cancel()` may be
    called from any thread, also while another thread is blocked in `next()`: the decode loop stops
    the sequence without waiting for that `next()` (the batched engine removes a queued request at
    once and a running one at its next prefill chunk or step, and the blocked `next()` ends the
    stream); the eager loop stops after the token it is computing. `released` says when the decode
    loop holds nothing more for it.
    """

    def __init__(self, tokens: Iterator[int], render: Callable[[EventStream], Iterator[TokenEvent]]) -> None:
        self.tokens = tokens  # the decode loop's token ids
        self.cancelled = False
        self._tokens_closed = False
        self._events = render(self)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> TokenEvent:
        return next(self._events)

    def cancel(self) -> None:
        """Stop generating, from any thread (thread-safe; never waits for the decode loop)."""
        self.cancelled = True
        cancel = getattr(self.tokens, "cancel", None)
        if cancel is not None:
            cancel()

    def close(self) -> None:
        """End the stream (on the thread that iterates it, not while another is inside `next()`)."""
        self._events.close()
        self.close_tokens()  # the events never started: their cleanup never ran

    def close_tokens(self) -> None:
        if not self._tokens_closed:
            self._tokens_closed = True
            close = getattr(self.tokens, "close", None)
            if close is not None:
                close()

    def ready(self) -> bool:
        """Whether the next token is already decoded (`next()` returns without waiting for the engine).
        The eager loop computes on demand: never."""
        return isinstance(self.tokens, TokenStream) and self.tokens.ready()

    @property
    def released(self) -> bool:
        """Whether the decode loop has let go of the sequence (a cancelled one: after its next chunk or step)."""
        if isinstance(self.tokens, TokenStream):
            return self.tokens.released
        return self._tokens_closed


class LLMRuntime:
    """A causal LM plus its tokenizer, ready to stream completions."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        max_context: int | None = None,
        decode_loop: DecodeLoop | None = None,
        quantization: QuantizationReport | None = None,
        sampling_defaults: dict[str, float] | None = None,
    ) -> None:
        self.model = model.eval()
        self.sampling_defaults = dict(sampling_defaults or {})  # the model's generation_config's
        self.tokenizer = tokenizer
        model_limit = model.config.max_position_embeddings
        if max_context is not None and max_context > model_limit:
            raise ValueError(f"max_context {max_context} exceeds the model's max_position_embeddings {model_limit}")
        self.max_context = max_context or model_limit
        self.decode_loop = decode_loop or EagerDecodeLoop(model)
        self.quantization = quantization or QuantizationReport(mode="none")
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self._embedding = model.get_input_embeddings()
        self._dtype = compute_dtype(model)
        self._grammars = None  # GrammarCompiler, built at the first constrained request
        self._grammars_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: LLMConfig) -> LLMRuntime:
        """Load model and tokenizer, move to the device, quantize; sets torch's thread count.

        With `engine="batched"`, a model of an architecture it doesn't run is refused (ValueError)
        from its config, before any weight is read.
        """
        torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
        if config.engine == "onnx":
            return cls._from_onnx_config(config)
        source = resolve_model_source(config.model)
        tokenizer, model = _load_pretrained(source, config)
        model.requires_grad_(False)
        model.to(torch.device(config.device))
        calibration = llm_w8a8.calibration_ids(tokenizer) if config.quantization == "w8a8" else None
        report = quantize_model(model, config.quantization, calibration)
        decode_loop = build_decode_loop(model, config)
        return cls(
            model,
            tokenizer,
            max_context=config.max_context,
            decode_loop=decode_loop,
            quantization=report,
            sampling_defaults=generation_defaults(source),
        )

    @classmethod
    def _from_onnx_config(cls, config: LLMConfig) -> LLMRuntime:
        """The ONNX engine: the export runs the layers; torch keeps only the embedding table (prompts,
        media splicing, each decode step's token), not the layers' float weights."""
        from modalities.llm.embedding_model import load_embedding_model
        from modalities.llm.engine.onnx import OnnxForward
        from modalities.llm.onnx_export import prepare_onnx_for

        source = resolve_model_source(config.model)
        if not Path(source).is_dir():
            raise FileNotFoundError(f"llm.engine 'onnx' needs a local model directory to export, got {source!r}")
        tokenizer, model = load_embedding_model(Path(source))
        check_batched_architecture(getattr(model.config, "model_type", None), model.config.architectures)
        forward = OnnxForward(prepare_onnx_for(Path(source)), model.get_input_embeddings(), threads=config.threads)
        engine = BatchedEngine(
            forward,
            max_slots=config.max_batch,
            max_context=config.max_context,
            prefix_cache_bytes=int(config.prefix_cache_mib * 2**20),
        )
        report = QuantizationReport(mode="int4", quantized=["every linear (ONNX MatMulNBits, blocks of 32)"])
        return cls(
            model,
            tokenizer,
            max_context=config.max_context,
            decode_loop=engine,
            quantization=report,
            sampling_defaults=generation_defaults(source),
        )

    # --- introspection -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return module_device(self._embedding)

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (a bfloat16-stored embedding still answers in this one)."""
        return self._dtype

    @property
    def hidden_size(self) -> int:
        return self._embedding.embedding_dim

    def engine_stats(self) -> EngineStats | None:
        """Active and queued sequences of the batched engine; None with the eager loop."""
        return self.decode_loop.stats() if isinstance(self.decode_loop, BatchedEngine) else None

    def weight_bytes(self) -> int:
        """Bytes held by parameters and buffers (quantized storage counted as stored, ties once), plus
        the ONNX engine's weights where it runs the layers."""
        forward = getattr(self.decode_loop, "forward", None)
        return weight_bytes(self.model) + getattr(forward, "weight_bytes", 0)

    # --- prompt helpers ------------------------------------------------------------------------

    def chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Render chat messages (`{"role", "content"}`) with the model's template into token ids."""
        if not self.tokenizer.chat_template:
            raise ValueError("this tokenizer has no chat template")
        text = self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        # The template already holds the special tokens; encoding must not add a BOS of its own.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def embed(self, input_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Token embeddings: `[L]` → `[L, H]`, `[B, L]` → `[B, L, H]`, on the model's device/dtype.

        no_grad rather than inference_mode: the result may be spliced next to trainable projector
        outputs, and inference tensors cannot take part in autograd.
        """
        ids = _as_ids(input_ids, self.device)
        with torch.no_grad():
            return self._embedding(ids)

    # --- generation ----------------------------------------------------------------------------

    def stream(
        self,
        inputs_embeds: torch.Tensor | None = None,
        *,
        input_ids: torch.Tensor | Sequence[int] | None = None,
        params: SamplingParams | None = None,
    ) -> EventStream:
        """Generate for one prompt, given as `inputs_embeds [1, L, H]` or `input_ids` (`[L]` or `[1, L]`).

        The prompt goes to the decode loop now (the batched engine queues it); iterate the answer for
        its events. Raises `InputError` (param "messages") when the prompt leaves no room in the
        context window.
        """
        params = params or SamplingParams()
        embeds = self._prompt_embeds(inputs_embeds, input_ids)
        prompt_tokens = embeds.shape[1]
        budget = min(params.max_tokens, self.max_context - prompt_tokens)
        if budget < 1:
            raise InputError(
                f"the prompt is {prompt_tokens} tokens; this model's context window is {self.max_context}",
                param="messages",
                code=CONTEXT_EXCEEDED_CODE,
            )
        eos_token_ids = frozenset() if params.ignore_eos else self.eos_token_ids
        sampler = self.sampler(params)
        tokens = self.decode_loop.run(embeds, sampler, budget, eos_token_ids)
        return EventStream(tokens, lambda stream: self._events(stream, sampler, budget, prompt_tokens, eos_token_ids))

    @property
    def grammars(self):
        """The `GrammarCompiler` for this tokenizer (built once, at the first constrained request)."""
        with self._grammars_lock:
            if self._grammars is None:
                from modalities.llm.grammar import GrammarCompiler

                self._grammars = GrammarCompiler(self.tokenizer, self._embedding.num_embeddings)
            return self._grammars

    def sampler(self, params: SamplingParams) -> AnswerSampler:
        """The answer's sampler; a constraint is compiled here, on the caller's thread, never on the
        decode loop's (`InputError` naming the field when the grammar library refuses it)."""
        vocab = self._embedding.num_embeddings
        if any(token >= vocab for token, _ in params.logit_bias):
            raise InputError(f"logit_bias names a token id outside this model's vocabulary (0-{vocab - 1})", param="logit_bias")
        if params.constraint is None:
            return AnswerSampler(params)
        grammars = self.grammars
        closing = grammars.closing_for(params.constraint)
        matcher = grammars.matcher(params.constraint)
        return AnswerSampler(params, matcher, grammars.vocab_size, closing, grammars.call_openers, self.token_bytes)

    def token_bytes(self, token_id: int) -> bytes:
        """A token's bytes as the tokenizer spells them (a piece of a UTF-8 character stays a piece)."""
        return self.grammars.tokenizer.decode_bytes([token_id])

    def _events(
        self, stream: EventStream, sampler: AnswerSampler, budget: int, prompt_tokens: int, eos_token_ids: frozenset[int]
    ) -> Iterator[TokenEvent]:
        params = sampler.params
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        stops = StopStringFilter(params.stop)
        try:
            for count, token_id in enumerate(stream.tokens, start=1):
                if stream.cancelled:
                    return
                is_eos = token_id in eos_token_ids
                text = stops.push(detokenizer.flush() if is_eos else detokenizer.push(token_id))
                finish: FinishReason | None = None
                if stops.stopped or is_eos:
                    finish = "stop"
                elif count == budget:
                    text += stops.push(detokenizer.flush())
                    finish = "stop" if stops.stopped else "length"
                logprob = sampler.logprobs[count - 1] if params.logprobs else None
                if finish is not None:
                    text += stops.flush()
                    yield TokenEvent(token_id, text, finish, prompt_tokens, count, logprob)
                    return
                yield TokenEvent(token_id, text, logprob=logprob)
        finally:
            stream.close_tokens()  # a consumer that stops early (client gone) frees the KV cache now
        if not stream.cancelled:  # a cancelled sequence's tokens end early
            raise AssertionError("decode loop ended before EOS or its token budget")

    def generate(
        self,
        inputs_embeds: torch.Tensor | None = None,
        *,
        input_ids: torch.Tensor | Sequence[int] | None = None,
        params: SamplingParams | None = None,
    ) -> Completion:
        """Non-streaming: the whole completion at once (same tokens and text as `stream`)."""
        pieces: list[str] = []
        token_ids: list[int] = []
        for event in self.stream(inputs_embeds, input_ids=input_ids, params=params):
            pieces.append(event.text)
            token_ids.append(event.token_id)
            last = event
        return Completion(
            text="".join(pieces),
            token_ids=token_ids,
            finish_reason=last.finish_reason,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
        )

    def _prompt_embeds(self, inputs_embeds: torch.Tensor | None, input_ids) -> torch.Tensor:
        if (inputs_embeds is None) == (input_ids is None):
            raise ValueError("pass exactly one of inputs_embeds or input_ids")
        if inputs_embeds is None:
            ids = _as_ids(input_ids, self.device)
            inputs_embeds = self.embed(ids if ids.dim() == 2 else ids.unsqueeze(0))
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1 or inputs_embeds.shape[2] != self.hidden_size:
            raise ValueError(f"inputs_embeds must be [1, L, {self.hidden_size}], got {tuple(inputs_embeds.shape)}")
        if inputs_embeds.shape[1] == 0:
            raise InputError("the prompt is empty", param="messages")
        return inputs_embeds.to(device=self.device, dtype=self.dtype)


def build_decode_loop(model: nn.Module, config: LLMConfig) -> DecodeLoop:
    """The decode loop `config.engine` names, for an already loaded (and quantized) model."""
    if config.engine == "eager":
        return EagerDecodeLoop(model)
    check_batched_architecture(getattr(model.config, "model_type", None), [type(model).__name__])
    try:
        return BatchedEngine(
            model,
            max_slots=config.max_batch,
            max_context=config.max_context,
            prefix_cache_bytes=int(config.prefix_cache_mib * 2**20),
        )
    except ValueError as e:
        raise ValueError(f"llm.engine 'batched' cannot run this model: {e}") from e


def resolve_model_source(model: str) -> str:
    """'packaged' → the prepared SmolLM2 directory (converted now if needed); a path must exist."""
    if model == PACKAGED:
        from modalities.llm.weights import prepare_llm

        return str(prepare_llm())
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    if not HUB_NAME.fullmatch(model):
        raise FileNotFoundError(f"LLM directory not found: {model}")
    return model


SAMPLING_KEYS = ("temperature", "top_p")  # what a generation_config.json may set that OpenAI's API has


def generation_defaults(source: str) -> dict[str, float]:
    """The sampling settings a model directory's generation_config.json sets explicitly (vLLM's
    `--generation-config auto`); {} for a hub name or a file without them."""
    import json

    path = Path(source) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return {}
    return {key: float(config[key]) for key in SAMPLING_KEYS if isinstance(config.get(key), (int, float))}


def _load_pretrained(source: str, config: LLMConfig) -> tuple[PreTrainedTokenizerBase, nn.Module]:
    """Tokenizer and causal LM from a directory or hub name (`resolve_model_source`'s answer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    local = Path(source).is_dir()
    try:
        model_config = AutoConfig.from_pretrained(source, local_files_only=local)
        if config.engine == "batched":
            check_batched_architecture(model_config.model_type, model_config.architectures)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(
            source, config=model_config, dtype=DTYPES[config.dtype], local_files_only=local
        )
    except OSError as e:
        where = "local directory" if local else "hub name (is a hub reachable from here?)"
        raise FileNotFoundError(f"cannot load LLM from {source!r} as a {where}: {e}") from e
    return tokenizer, model


def _as_ids(input_ids: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.tensor(list(input_ids), dtype=torch.long)
    if ids.dtype not in (torch.long, torch.int32) or ids.dim() not in (1, 2):
        raise ValueError(f"input_ids must be integer [L] or [B, L], got {ids.dtype} {tuple(ids.shape)}")
    return ids.to(device=device, dtype=torch.long)


def _eos_token_ids(model: nn.Module, tokenizer) -> frozenset[int]:
    """End-of-sequence ids from the generation config (int or list) and the tokenizer."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    configured = generation_config.eos_token_id if generation_config is not None else None
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the generation config nor the tokenizer names an EOS token")
    return frozenset(ids)
