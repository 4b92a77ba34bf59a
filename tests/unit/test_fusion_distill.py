"""Distillation on tiny random models: answer turns and their teacher prompts, the loss terms (KL at a
temperature, the hidden-state match, the CE weight), the CTC alignment stage, and the teacher's answers."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from fusion import align as align_module
from fusion import batches
from fusion.agreement import request_embeds
from fusion.align import Aligner, align, sentence_ids
from fusion.batches import IGNORE_INDEX, Example, _padded_features, build_inputs, projector_loss
from fusion.evaluate import greedy_texts
from fusion.projectors import build_projector
from fusion.prompt import MediaSlot
from fusion.teacher import teacher_answers
from fusion.train import STATE_FILE, TrainConfig, train
from tests.helpers.models import TINY_HIDDEN

D_AUDIO = 16
HIDDEN = TINY_HIDDEN  # the conftest's `model`
REPEAT = "Repeat exactly what was said."


def _frames(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, D_AUDIO, generator=torch.Generator().manual_seed(seed))


def _mixed() -> list[Example]:
    """Two "repeat" turns and two answer turns (the clip is the whole user turn), clips of different lengths."""
    return [
        Example(_frames(12, 0), "stop", REPEAT),
        Example(_frames(20, 1), "Sorry to hear that.", "", spoken="my kettle leaks"),
        Example(_frames(8, 2), "go", REPEAT, media_first=True),
        Example(_frames(16, 3), "It ships today.", "", spoken="where is it"),
    ]


def _projector(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_projector("stack4_swiglu", D_AUDIO, HIDDEN)


# --- answer turns and the teacher's prompt -----------------------------------------------------------


def test_an_answer_turn_is_the_clip_alone_and_the_teacher_reads_what_was_said(model, tokenizer, monkeypatch):
    plans = []

    def spy(messages, tok, mode=None, **kwargs):
        plan = real(messages, tok, mode, **kwargs)
        plans.append((mode, plan))
        return plan

    real = batches.build_prompt
    monkeypatch.setattr(batches, "build_prompt", spy)
    example = Example(_frames(8, 0), "It ships today.", "", spoken="where is my parcel")
    _, _, student_labels = build_inputs([example], _projector(), model, tokenizer, "embed")
    _, _, teacher_labels = build_inputs([example], None, model, tokenizer, "transcript")
    (s_mode, student), (t_mode, teacher) = plans
    assert (s_mode, t_mode) == ("embed", "transcript")

    def text(plan) -> str:
        return "".join("<MEDIA>" if isinstance(p, MediaSlot) else tokenizer.decode(p) for p in plan.pieces)

    # No instruction: the clip (student) or the sentence (teacher) is the whole user turn.
    assert text(student) == "<|im_start|>user\n<audio><MEDIA></audio><|im_end|>\n<|im_start|>assistant\n"
    assert text(teacher) == "<|im_start|>user\nwhere is my parcel<|im_end|>\n<|im_start|>assistant\n"
    # Both are taught the answer, not the sentence.
    answer = tokenizer.encode("It ships today.<|im_end|>", add_special_tokens=False)
    assert (
        student_labels[student_labels != IGNORE_INDEX].tolist()
        == teacher_labels[teacher_labels != IGNORE_INDEX].tolist()
        == answer
    )

    # A "repeat" turn: the teacher reads the target (the sentence) where the clip was, after the instruction.
    plans.clear()
    build_inputs([Example(_frames(8, 0), "stop", REPEAT)], None, model, tokenizer, "transcript")
    assert text(plans[0][1]) == f"<|im_start|>user\n{REPEAT}stop<|im_end|>\n<|im_start|>assistant\n"


class TokenProjector(nn.Module):
    """Soft tokens that are exactly the embeddings of the token ids carried in the frames `[T, 1]`."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, frames: torch.Tensor, lengths=None) -> torch.Tensor:
        return self.embedding(frames[..., 0].long())

    def num_output_tokens(self, num_input_frames: int) -> int:
        return num_input_frames


def test_a_student_reading_the_teachers_tokens_has_no_kl_and_no_hidden_gap(model, tokenizer):
    """With one byte per token, "<audio>ab</audio>" as text is the markup around soft tokens "ab":
    a student whose soft tokens are the embeddings of "ab" sees the teacher's exact input."""
    projector = TokenProjector(model.get_input_embeddings())

    def example(says: str, spoken: str, target: str) -> Example:
        ids = tokenizer.encode(says, add_special_tokens=False)
        return Example(torch.tensor(ids, dtype=torch.float32)[:, None], target, "", spoken=f"<audio>{spoken}</audio>")

    same = [example("ab", "ab", "Fine."), example("abcd", "abcd", "Not at all, thanks.")]
    _, stats = projector_loss(
        same, projector, model, tokenizer, distill_weight=1.0, hidden_weight=1.0, kl_temperature=2.0
    )
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6) and stats["hidden"] == pytest.approx(0.0, abs=1e-10)
    different = [example("xy", "ab", "Fine."), example("wxyz", "abcd", "Not at all, thanks.")]
    _, stats = projector_loss(
        different, projector, model, tokenizer, distill_weight=1.0, hidden_weight=1.0, kl_temperature=2.0
    )
    assert stats["kl"] > 1e-3 and stats["hidden"] > 1e-3


# --- the loss terms ----------------------------------------------------------------------------------


def test_loss_terms_weights_and_temperature(model, tokenizer):
    examples, projector = _mixed(), _projector()
    loss, stats = projector_loss(examples, projector, model, tokenizer)
    assert set(stats) == {"ce", "loss"} and loss.item() == pytest.approx(stats["ce"])

    kl = {
        t: projector_loss(examples, projector, model, tokenizer, distill_weight=1.0, kl_temperature=t)[1]["kl"]
        for t in (1.0, 2.0, 50.0)
    }
    assert kl[1.0] > 0 and kl[2.0] != pytest.approx(kl[1.0], rel=1e-3)
    assert kl[50.0] < 0.01 * kl[1.0]  # both distributions near uniform at a high temperature

    loss, stats = projector_loss(examples, projector, model, tokenizer, distill_weight=1.0, ce_weight=0.0)
    assert stats["ce"] > 0 and loss.item() == pytest.approx(stats["kl"], rel=1e-5)  # CE reported, not trained on

    loss, stats = projector_loss(examples, projector, model, tokenizer, 0.5, 0.25, 2.0, kl_temperature=2.0)
    assert set(stats) == {"ce", "kl", "hidden", "loss"} and stats["hidden"] >= 0
    assert loss.item() == pytest.approx(0.25 * stats["ce"] + 0.5 * stats["kl"] + 2.0 * stats["hidden"], rel=1e-5)


def test_split_turns_put_the_teacher_on_answer_turns_and_ce_on_repeat_turns(model, tokenizer):
    examples, projector = _mixed(), _projector()
    repeats, answers = examples[0::2], examples[1::2]
    split = projector_loss(examples, projector, model, tokenizer, 1.0, 1.0, 1.0, split_turns=True)[1]
    # CE from the repeat turns alone, KL and hidden from the answer turns alone: each equals the
    # term computed on that half of the batch by itself (all positions of a half are its own).
    assert split["ce"] == pytest.approx(projector_loss(repeats, projector, model, tokenizer)[1]["ce"], rel=1e-4)
    answers_only = projector_loss(answers, projector, model, tokenizer, 1.0, 1.0, 1.0)[1]
    assert split["kl"] == pytest.approx(answers_only["kl"], rel=1e-4)
    assert split["hidden"] == pytest.approx(answers_only["hidden"], rel=1e-4)
    # A batch without answer turns has no teacher term; one without repeat turns has no CE.
    assert projector_loss(repeats, projector, model, tokenizer, 1.0, 1.0, 1.0, split_turns=True)[1]["kl"] == 0.0
    assert projector_loss(answers, projector, model, tokenizer, 1.0, 1.0, 1.0, split_turns=True)[1]["ce"] == 0.0


def test_with_split_turns_the_teacher_reads_only_the_answer_turns(model, tokenizer, monkeypatch):
    read: list[int] = []
    real = batches.build_inputs

    def spy(examples, projector, model, tokenizer, mode):
        if mode == "transcript":
            read.append(len(examples))
        return real(examples, projector, model, tokenizer, mode)

    monkeypatch.setattr(batches, "build_inputs", spy)
    examples, projector = _mixed(), _projector()
    projector_loss(examples, projector, model, tokenizer, 1.0, 1.0, 1.0, split_turns=True)
    projector_loss(examples[0::2], projector, model, tokenizer, 1.0, 1.0, 1.0, split_turns=True)  # repeats only
    projector_loss(examples, projector, model, tokenizer, 1.0, 1.0, 1.0)
    assert read == [2, 4]  # the two answer turns; none for a batch of repeats; every turn without split


def test_the_hidden_term_alone_trains_the_projector(model, tokenizer):
    projector = _projector()
    loss, stats = projector_loss(_mixed(), projector, model, tokenizer, ce_weight=0.0, hidden_weight=1.0)
    assert set(stats) == {"ce", "hidden", "loss"} and stats["hidden"] > 0
    assert loss.item() == pytest.approx(stats["hidden"], rel=1e-5)
    loss.backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in (projector.linear_1.weight, projector.linear_2.weight)
    )


def test_hidden_weight_and_answers_need_what_they_read():
    with pytest.raises(ValidationError, match="needs distill"):
        TrainConfig(data_dir="d", out_dir="o", hidden_weight=1.0)
    assert TrainConfig(data_dir="d", out_dir="o", hidden_weight=1.0, distill=True).hidden_weight == 1.0
    with pytest.raises(ValidationError, match="transcript"):
        TrainConfig(data_dir="d", out_dir="o", modality="image", answer_share=0.5)


# --- the alignment stage (CTC to the sentences' token embeddings) -----------------------------------


WORDS = ("yes", "no", "stop", "go")
LENGTHS = (16, 12, 24, 20)  # frames: 4, 3, 6, 5 soft tokens at stack 4


def _word_examples() -> list[Example]:
    """Each clip carries its word's code in every frame; four different lengths (padded batches)."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(len(WORDS), D_AUDIO, generator=gen)
    return [
        Example(codes[i].repeat(n, 1) + 0.1 * torch.randn(n, D_AUDIO, generator=gen), word, REPEAT)
        for i, (word, n) in enumerate(zip(WORDS, LENGTHS))
    ]


def _table(tokenizer) -> torch.Tensor:
    return 0.3 * torch.randn(len(tokenizer), HIDDEN, generator=torch.Generator().manual_seed(1))


def test_sentence_ids_are_what_was_said(tokenizer):
    examples = [Example(_frames(4, 0), "stop", REPEAT), Example(_frames(4, 0), "Sure.", "", spoken="go")]
    assert sentence_ids(tokenizer, examples) == [tokenizer.encode("stop"), tokenizer.encode("go")]


def test_padding_does_not_reach_the_ctc_loss(tokenizer):
    examples, projector = _word_examples(), _projector()
    ids = sentence_ids(tokenizer, examples)
    torch.manual_seed(0)
    aligner = Aligner(_table(tokenizer), [t for row in ids for t in row])
    frames, lengths = _padded_features(examples, torch.device("cpu"))
    with torch.no_grad():
        soft = projector(frames)
        _, batched = aligner.loss(soft, [projector.num_output_tokens(n) for n in lengths], ids)
        alone = [
            aligner.loss(projector(ex.features[None]), [projector.num_output_tokens(n)], [row])[1]["ctc"]
            for ex, n, row in zip(examples, lengths, ids)
        ]
    assert math.isfinite(batched["ctc"]) and batched["ctc"] == pytest.approx(sum(alone) / len(alone), rel=1e-5)


def test_alignment_lowers_the_ctc_loss(tokenizer):
    examples, table = _word_examples(), _table(tokenizer)
    projector = _projector()
    start = {k: v.clone() for k, v in projector.state_dict().items()}
    history = align(projector, table, tokenizer, examples, 30, 4, 1e-2, seed=0, progress=False, log=lambda _: None)
    assert [h["align_step"] for h in history] == list(range(1, 31))
    assert all(math.isfinite(h["ctc"]) and math.isfinite(h["rms"]) for h in history)
    assert all(torch.isfinite(p).all() for p in projector.parameters())
    # Measured: 4.6 → 0.008 (the four words, each batch the four clips padded to the longest).
    assert history[-1]["ctc"] < 0.25 * history[0]["ctc"], (history[0], history[-1])

    again = _projector()
    again.load_state_dict(start)
    replay = align(again, table, tokenizer, examples, 30, 4, 1e-2, seed=0, progress=False, log=lambda _: None)
    assert replay == history  # seeded: the same batches, the same steps


def test_train_aligns_once_and_a_resumed_run_does_not_realign(model, tokenizer, tmp_path, monkeypatch):
    calls = []

    def counting_align(*args, **kwargs):
        calls.append(args[4])  # steps
        return real_align(*args, **kwargs)

    real_align = align_module.align
    monkeypatch.setattr(align_module, "align", counting_align)
    config = TrainConfig(
        data_dir=str(tmp_path),
        out_dir=str(tmp_path / "run"),
        steps=2,
        batch_size=2,
        lr=1e-2,
        warmup_steps=1,
        align_steps=5,
        align_lr=1e-2,
        checkpoint_every=1,
    )
    result = train(config, model, tokenizer, _word_examples(), log=lambda _: None, progress=False)
    assert calls == [5] and result.step == 2
    assert result.history[0]["step"] == 0 and result.history[0]["align"]["align_step"] == 5
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=False)
    assert state["aligned"] is True

    resumed = train(
        config.model_copy(update={"steps": 3}), model, tokenizer, _word_examples(), log=lambda _: None, progress=False
    )
    assert calls == [5] and resumed.step == 3
    assert sum("align" in h for h in resumed.history) == 1


def test_init_from_starts_from_a_checkpoints_weights_without_aligning(model, tokenizer, tmp_path, monkeypatch):
    from fusion.checkpoint import ModelIdentity, save_projector

    monkeypatch.setattr(align_module, "align", lambda *a, **k: pytest.fail("a run started from weights must not realign"))
    start = _projector(seed=7)
    who = ModelIdentity(name="tiny")
    save_projector(tmp_path / "start", start, kind="stack4_swiglu", encoder=who, llm=who, dtype="float32")
    config = TrainConfig(
        data_dir=str(tmp_path), out_dir=str(tmp_path / "run"), steps=1, batch_size=2, lr=1e-9, warmup_steps=1,
        align_steps=5, init_from=str(tmp_path / "start"),
    )
    result = train(config, model, tokenizer, _word_examples(), log=lambda _: None, progress=False)
    for name, weight in start.state_dict().items():  # lr 1e-9: one step leaves the weights where they started
        assert torch.allclose(result.projector.state_dict()[name], weight, atol=1e-6), name


# --- the teacher's answers ---------------------------------------------------------------------------


def test_teacher_answers_cover_every_sentence(model, tokenizer):
    texts = ["where is my parcel", "hi", "the kettle leaks water", "refund please", "ok"]
    yielded = list(teacher_answers(model, tokenizer, texts, max_new_tokens=4, batch=2))
    assert len(yielded) == 3 and all(isinstance(d, dict) for d in yielded)
    answers = {k: v for d in yielded for k, v in d.items()}
    assert set(answers) == set(texts) and sum(len(d) for d in yielded) == len(texts)
    # Each answer is the greedy answer to its own sentence (batching and sorting by length keep the pairing).
    eos = {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    for text in texts:
        prompt = request_embeds(model, tokenizer, "transcript", text=text)
        assert answers[text] == greedy_texts(model, tokenizer, eos, [prompt], 4)[0].strip()
