"""llama.cpp as the reference our LLM engine is measured against, through llama-cpp-python (the
optional `bench` extra) on the Q4_1 GGUF the packaged SmolLM2 weights come from, fed our token ids.

- `LlamaCppDecoder`: one sequence through the high-level `Llama` API (the decode section).
- `LlamaCppBatch`: several sequences decoded together, the way llama.cpp's own server batches its
  slots: one `llama_decode` per step over a batch holding every sequence's next token (sequence
  ids in a unified KV cache), the prompts prefilled together in the first batch (the concurrency
  section).
"""

from __future__ import annotations

import time

import numpy as np

LLAMA_CPP_CONTEXT = 1024  # the prefill figure's 540-token prompt and its answer fit
NOT_INSTALLED = "llama.cpp not installed: pip install -e '.[bench]'"


class LlamaCppDecoder:
    """llama-cpp-python on the Q4_1 GGUF the packaged weights come from, fed our token ids."""

    def __init__(self, threads: int, flash_attn: bool = False) -> None:
        from llama_cpp import Llama

        from modalities.llm.weights import packaged_gguf_path

        self.path = packaged_gguf_path()
        self.llm = Llama(
            model_path=str(self.path), n_threads=threads, n_threads_batch=threads, n_ctx=LLAMA_CPP_CONTEXT,
            flash_attn=flash_attn, verbose=False,
        )

    def stamps(self, ids: list[int], new_tokens: int) -> tuple[list[float], list[int]]:
        """Arrival time of each greedy token (EOS ignored, as ours), and the tokens."""
        self.llm.reset()  # no prefix reuse between repeats: same work as ours every time
        stamps, tokens = [], []
        for token in self.llm.generate(ids, temp=0.0, top_k=1, reset=True):
            stamps.append(time.perf_counter())
            tokens.append(int(token))
            if len(tokens) == new_tokens:
                break
        return stamps, tokens


class LlamaCppBatch:
    """Greedy decoding of up to `max_sequences` prompts in one llama.cpp batch per step (low-level API)."""

    def __init__(self, threads: int, max_sequences: int, context_per_sequence: int = LLAMA_CPP_CONTEXT) -> None:
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        from modalities.llm.weights import packaged_gguf_path

        self._api = api = llama_cpp
        self.path = packaged_gguf_path()
        params = api.llama_context_default_params()
        params.n_ctx = params.n_batch = max_sequences * context_per_sequence
        params.n_seq_max = max_sequences
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True  # one cache for every sequence, as llama.cpp's server uses it
        with suppress_stdout_stderr(disable=False):
            api.llama_backend_init()
            self._model = api.llama_model_load_from_file(str(self.path).encode(), api.llama_model_default_params())
            if not self._model:
                raise RuntimeError(f"llama.cpp could not load {self.path}")
            self._ctx = api.llama_init_from_model(self._model, params)
        if not self._ctx:
            api.llama_model_free(self._model)
            raise RuntimeError("llama.cpp could not create a context")
        self._vocab_size = api.llama_vocab_n_tokens(api.llama_model_get_vocab(self._model))
        self._batch = api.llama_batch_init(params.n_batch, 0, max_sequences)

    def run(self, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
        """(seconds from the first prefill to the last token, each sequence's greedy tokens)."""
        api = self._api
        api.llama_memory_clear(api.llama_get_memory(self._ctx), True)  # no reuse between runs
        self._batch.n_tokens = 0
        last = []
        for sequence, ids in enumerate(prompts):
            for position, token in enumerate(ids):
                self._add(token, position, sequence, position == len(ids) - 1)
            last.append(self._batch.n_tokens - 1)
        start = time.perf_counter()
        self._decode()
        chosen = [self._greedy(index) for index in last]
        tokens = [[token] for token in chosen]
        positions = [len(ids) for ids in prompts]
        for _ in range(new_tokens - 1):
            self._batch.n_tokens = 0
            for sequence, token in enumerate(chosen):
                self._add(token, positions[sequence], sequence, True)
                positions[sequence] += 1
            self._decode()
            chosen = [self._greedy(index) for index in range(len(prompts))]
            for sequence, token in enumerate(chosen):
                tokens[sequence].append(token)
        return time.perf_counter() - start, tokens

    def close(self) -> None:
        api = self._api
        api.llama_batch_free(self._batch)
        api.llama_free(self._ctx)
        api.llama_model_free(self._model)

    def _add(self, token: int, position: int, sequence: int, logits: bool) -> None:
        batch, index = self._batch, self._batch.n_tokens
        batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, position, 1
        batch.seq_id[index][0] = sequence
        batch.logits[index] = logits
        batch.n_tokens = index + 1

    def _decode(self) -> None:
        status = self._api.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")

    def _greedy(self, index: int) -> int:
        logits = np.ctypeslib.as_array(self._api.llama_get_logits_ith(self._ctx, index), shape=(self._vocab_size,))
        return int(np.argmax(logits))
