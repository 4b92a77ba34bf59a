"""The teacher's targets: what the frozen LLM answers when it reads a caller's sentence as text.

Self-distillation (Ultravox, BLSP, AudioChatLlama) trains the projector so that the LLM hearing the
clip continues the way the same LLM continues reading the transcript. The continuation it is taught
on is the LLM's own greedy answer to the sentence as the whole user turn — the same prompt
`fusion.agreement` uses for its `reference` answers — made once per sentence when the corpus is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from tqdm import tqdm

from fusion.agreement import request_embeds
from fusion.evaluate import greedy_texts

BATCH = 48


@torch.no_grad()
def teacher_answers(model: nn.Module, tokenizer, texts: Sequence[str], max_new_tokens: int, batch: int = BATCH) -> Iterator[dict[str, str]]:
    """{sentence: answer} for each batch of `texts`, greedy, at most `max_new_tokens` tokens."""
    eos = {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    # Similar lengths together: less padding in each batched generation.
    ordered = sorted(texts, key=len)
    with tqdm(total=len(ordered), desc="teacher answers", unit="sentence") as bar:
        for i in range(0, len(ordered), batch):
            group = ordered[i : i + batch]
            prompts = [request_embeds(model, tokenizer, "transcript", text=t) for t in group]
            answers = greedy_texts(model, tokenizer, eos, prompts, max_new_tokens)
            bar.update(len(group))
            yield dict(zip(group, (a.strip() for a in answers)))
