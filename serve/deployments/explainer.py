"""The decoder's explanations: the float model beside the engine, loaded on the first explained
request, and the explanation's JSON (`chorus.explanation`) from a prompt plan and an answer."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fusion.attribution import plan_map, segment_relevance
from fusion.prompt import PromptPlan
from modalities.llm.explain import explain, load_explainer
from modalities.llm.runtime import resolve_model_source

WHISPER_FRAMES_PER_S = 50  # the audio features' rate (`AudioResult.features`)
METHOD = {
    "attention": "the answer tokens' attention on each kind's prompt positions, summed over every layer and head "
    "(all weighted alike), over the kinds present (template markup and the answer itself left out)",
    "ablation": "log p(answer) with the kind's positions removed (masked out of attention, later positions "
    "renumbered: the prompt without them) minus log p(answer) as asked",
    "segments": "the same attention summed per segment (sentence, transcript word, line read, 80 ms audio bin, "
    "image patch); relevance sums to 1 over the segments",
}


def explainer_dtype() -> torch.dtype:
    """bfloat16 where the CPU multiplies it natively (AMX, AVX-512 BF16; measured 1.9x faster than
    float32 here, deltas within ~0.3 nats of float32's) or on a GPU; float32 elsewhere."""
    if torch.cuda.is_available():
        return torch.bfloat16
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32


class Explainer:
    def __init__(self, model: str) -> None:
        self.model_name = model
        self.source: str | None = None
        self._model: torch.nn.Module | None = None
        self._lock = threading.Lock()  # one explanation pass at a time per replica (and one load)

    def explain(
        self,
        plan: PromptPlan,
        inputs_embeds: torch.Tensor,
        answer_ids: Sequence[int],
        media_tokens: Mapping[int, int],
        media_frames: Mapping[int, int],
    ) -> dict[str, Any]:
        """The explanation of `answer_ids` for the prompt `plan` embedded as `inputs_embeds`, whose
        media item `i` spliced `media_tokens[i]` soft tokens from `media_frames[i]` encoder frames
        (for audio bins' times)."""
        seconds = {
            index: media_frames[index] / WHISPER_FRAMES_PER_S / tokens
            for index, tokens in media_tokens.items()
            if tokens and index in media_frames
        }
        mapped = plan_map(plan, media_tokens, seconds)
        with self._lock:
            if self._model is None:
                self.source = resolve_model_source(self.model_name)
                self._model = load_explainer(self.source, explainer_dtype())
            result = explain(self._model, inputs_embeds, answer_ids, mapped.kinds)
        mass = result.position_mass.tolist()
        return {
            "modalities": {
                kind: {
                    "attention_share": round(result.attention_share[kind], 6),
                    "ablation_delta_logprob": round(result.ablation_delta[kind], 4),
                    "tokens": result.tokens[kind],
                }
                for kind in result.attention_share
            },
            "segments": segment_relevance(mapped.segments, mass),
            "answer": {"tokens": result.answer_tokens, "logprob": round(result.answer_logprob, 4)},
            "method": {
                **METHOD,
                "layers": result.layers,
                "heads": result.heads,
                "passes": 1,
                "rows": result.rows,
                "cost_ms": round(result.cost_ms, 1),
                "model": f"{Path(self.source or self.model_name).name} ({str(explainer_dtype()).removeprefix('torch.')})",
            },
        }

