"""SpecAugment on cached encoder frames (`fusion.feature_augment`) and its use in training."""

from __future__ import annotations

import pytest
import torch

from fusion.align import align
from fusion.batches import Example
from fusion.feature_augment import FeatureAugment
from fusion.projectors import build_projector
from fusion.train import STATE_FILE, TrainConfig, train
from tests.helpers.models import TINY_HIDDEN

D_AUDIO = 16
HIDDEN = TINY_HIDDEN  # the conftest's `model`
OFF = FeatureAugment(speed=0, time_masks=0, channel_masks=0, noise=0)


def _frames(length: int = 100, dim: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(length, dim, generator=torch.Generator().manual_seed(seed)).half()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_everything_off_is_a_float32_copy():
    frames = _frames()
    out = OFF(frames, _gen())
    assert out.dtype == torch.float32 and torch.equal(out, frames.float())
    out[0, 0] = 99.0
    assert frames[0, 0] != 99.0  # a copy: the cached features are never written


def test_seeded_views_repeat_and_differ():
    augment, frames = FeatureAugment(), _frames()
    first, again, other = augment(frames, _gen(1)), augment(frames, _gen(1)), augment(frames, _gen(2))
    assert torch.equal(first, again)
    assert first.shape != other.shape or not torch.equal(first, other)


def _contiguous(indices: list[int]) -> bool:
    return indices == list(range(indices[0], indices[-1] + 1)) if indices else True


def test_masks_touch_only_their_spans():
    frames = _frames()
    source = frames.float()
    policy = OFF.model_copy(update={"time_masks": 1, "time_width": 5, "channel_masks": 1, "channel_width": 3})
    masked_any = False
    for seed in range(20):
        out = policy(frames, _gen(seed))
        zero_columns = [j for j in range(out.shape[1]) if bool((out[:, j] == 0).all())]
        rest = [j for j in range(out.shape[1]) if j not in zero_columns]
        rows = (out[:, rest] != source[:, rest]).any(1).nonzero().flatten().tolist()
        assert len(zero_columns) <= 3 and _contiguous(zero_columns)
        assert len(rows) <= 5 and _contiguous(rows)
        for r in rows:  # a masked time step holds the clip's mean frame
            assert torch.allclose(out[r, rest], source.mean(0)[rest])
        masked_any = masked_any or bool(rows and zero_columns)
    assert masked_any


def test_speed_stretches_within_its_range():
    frames, policy = _frames(200), OFF.model_copy(update={"speed": 0.2})
    lengths = {policy(frames, _gen(seed)).shape[0] for seed in range(40)}
    assert min(lengths) >= round(200 / 1.2) and max(lengths) <= round(200 / 0.8)
    assert len(lengths) > 5  # the factor is drawn, not fixed


def test_noise_follows_each_dimensions_spread():
    scales = torch.linspace(0.1, 3.0, 64)
    frames = torch.randn(4000, 64, generator=_gen(3)) * scales
    out = OFF.model_copy(update={"noise": 0.2})(frames, _gen(4))
    ratio = (out - frames).std(0) / frames.std(0)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.2), rtol=0.1)  # 4,000 draws per dimension


def test_validation():
    with pytest.raises(ValueError):
        FeatureAugment(speed=1.0)
    with pytest.raises(ValueError):
        FeatureAugment(time_width=0)


# --- in the training stages -------------------------------------------------------------------------


def _examples(n: int, seed: int = 0) -> list[Example]:
    """Clip i says word i % 4, its code in every frame (the same codes for every seed; the noise differs)."""
    words = ["yes", "no", "stop", "go"]
    codes = torch.randn(len(words), D_AUDIO, generator=_gen(0))
    gen = _gen(seed + 1)
    return [
        Example(codes[i % 4].repeat(24, 1) + 0.1 * torch.randn(24, D_AUDIO, generator=gen), words[i % 4], "Repeat.")
        for i in range(n)
    ]


class _Counting:
    """An augmentation that records which clips it saw (by identity of their cached features)."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.policy = FeatureAugment(speed=0.1, time_width=2, channel_width=2)

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.seen.append(id(frames))
        return self.policy(frames, generator)


def test_alignment_augments_training_clips_only_and_measures_held_out_ctc(tokenizer):
    examples, held_out = _examples(8), _examples(4, seed=5)
    table = 0.3 * torch.randn(len(tokenizer), HIDDEN, generator=_gen(1))
    counting = _Counting()
    torch.manual_seed(0)
    projector = build_projector("stack4_swiglu", D_AUDIO, HIDDEN)
    history = align(
        projector, table, tokenizer, examples, 40, 4, 1e-2, seed=0, progress=False, log=lambda _: None,
        augment=counting, eval_sets={"held": held_out},
    )
    assert len(counting.seen) == 40 * 4
    assert set(counting.seen) <= {id(ex.features) for ex in examples}
    assert [h["align_step"] for h in history if "eval_ctc" in h] == list(range(4, 41, 4))
    untrained, last = history[0]["ctc"], history[-1]["eval_ctc"]["held"]
    # Measured: 5.5 (the first training batch, untrained) → 1.9 held out (the same four words, other noise).
    assert last < 0.5 * untrained, (untrained, last)


def test_an_augmented_run_resumes_where_it_stopped(model, tokenizer, tmp_path, monkeypatch):
    """The augmentation's draws and the epoch's order are part of the saved state: a run interrupted
    after step 2 (mid-epoch) and resumed ends where an uninterrupted one does."""
    import fusion.train as train_module

    examples = _examples(16)

    def config(out: str) -> TrainConfig:
        return TrainConfig(
            data_dir=str(tmp_path), out_dir=str(tmp_path / out), steps=4, batch_size=4, lr=1e-2, warmup_steps=1,
            checkpoint_every=1, augment_features=FeatureAugment(),
        )

    straight = train(config("straight"), model, tokenizer, examples, log=lambda _: None, progress=False)
    real_step = train_module._optimizer_step

    def interrupted(config, run, *args):
        if run.step == 2:
            raise KeyboardInterrupt
        return real_step(config, run, *args)

    monkeypatch.setattr(train_module, "_optimizer_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config("split"), model, tokenizer, examples, log=lambda _: None, progress=False)
    monkeypatch.setattr(train_module, "_optimizer_step", real_step)
    assert torch.load(tmp_path / "split" / STATE_FILE, weights_only=False)["step"] == 2
    resumed = train(config("split"), model, tokenizer, examples, log=lambda _: None, progress=False)
    for (name, a), b in zip(straight.projector.state_dict().items(), resumed.projector.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    plain = train(
        config("plain").model_copy(update={"augment_features": None}), model, tokenizer, examples,
        log=lambda _: None, progress=False,
    )
    assert not torch.allclose(plain.projector.linear_2.weight, straight.projector.linear_2.weight)
