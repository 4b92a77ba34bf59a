"""Paired comparison of two projector evaluations: the bootstrap interval, the clip counts, reports."""

from __future__ import annotations

import json

import pytest

from fusion.paired import compare_cli, compare_reports, format_comparison, paired_difference


def test_identical_scores_differ_by_nothing():
    r = paired_difference([1, 2, 3], [1, 2, 3], [10, 10, 10], lower_is_better=True)
    assert (r.difference, r.low, r.high) == (0.0, 0.0, 0.0)
    assert (r.first_better, r.second_better, r.decided) == (0, 0, False)


def test_ratio_statistic_is_the_corpus_figure():
    # WER: errors over words, summed over clips first (a long clip weighs more than a short one)
    r = paired_difference([1, 9], [0, 0], [10, 20], lower_is_better=True)
    assert r.first == pytest.approx(10 / 30) and r.second == 0.0 and r.difference == pytest.approx(10 / 30)
    assert (r.first_better, r.second_better) == (0, 2)


def test_a_consistent_gain_is_decided_and_one_clip_is_not():
    better = paired_difference([0] * 60, [1] * 60, [10] * 60, lower_is_better=True)
    assert better.decided and better.high < 0 and better.first_better == 60
    one_clip = paired_difference([0] * 60, [0] * 59 + [5], [10] * 60, lower_is_better=True)
    assert one_clip.difference < 0 and not one_clip.decided  # a third of the resamples miss that clip
    assert (one_clip.first_better, one_clip.second_better) == (1, 0)


def test_higher_is_better_counts_the_other_way():
    r = paired_difference([0.9, 0.5, 0.2], [0.5, 0.5, 0.4], lower_is_better=False)
    assert (r.first_better, r.second_better) == (1, 1)
    assert r.difference == pytest.approx((1.6 - 1.4) / 3)


def test_seeded_bootstrap_repeats():
    a, b = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    first = paired_difference(a, b, [10] * 8, lower_is_better=True, seed=3)
    assert first == paired_difference(a, b, [10] * 8, lower_is_better=True, seed=3)
    assert first.low <= first.difference <= first.high


@pytest.mark.parametrize(
    ("a", "b", "w"), [([], [], []), ([1, 2], [1], [1, 1]), ([1], [1], [0])], ids=["empty", "unequal", "no-words"]
)
def test_bad_inputs_are_refused(a, b, w):
    with pytest.raises(ValueError):
        paired_difference(a, b, w, lower_is_better=True)


def _repeat(per_clip: dict[str, list[int]], split: str = "eval_templates") -> dict:
    return {"task": "repeat", "splits": {split: {"clips": len(per_clip), "embed": {"per_clip": per_clip}}}}


def test_reports_pair_up_by_clip_id_not_by_position():
    first = _repeat({"a": [0, 5], "b": [5, 5], "c": [1, 10]})
    second = _repeat({"c": [1, 10], "b": [5, 5], "a": [0, 5], "only-here": [9, 9]})  # other order, one extra
    r = compare_reports(first, second)["splits"]["eval_templates"]
    assert r["clips"] == 3 and r["difference"] == 0.0 and not r["decided"]


def test_reports_of_another_corpus_or_task_are_refused():
    with pytest.raises(ValueError, match="length"):
        compare_reports(_repeat({"a": [0, 5]}), _repeat({"a": [0, 6]}))
    with pytest.raises(ValueError, match="one task"):
        compare_reports(_repeat({"a": [0, 5]}), {"task": "answer", "splits": {}})
    with pytest.raises(ValueError, match="per-clip"):
        compare_reports(_repeat({"a": [0, 5]}), {"task": "repeat", "splits": {"eval_templates": {"embed": {"wer": 0.1}}}})
    with pytest.raises(ValueError, match="no clips"):
        compare_reports(_repeat({"a": [0, 5]}), _repeat({"b": [0, 5]}))


def test_answer_reports_compare_a_pair_and_write_the_table(tmp_path, capsys):
    def answer(f1s):
        clips = {f"c{i}": {"embed_vs_reference": v, "transcript_vs_reference": 0.5} for i, v in enumerate(f1s)}
        return {"task": "answer", "splits": {"eval_synth": {"clips": len(f1s), "per_clip": clips}}}

    paths = [tmp_path / "new.json", tmp_path / "old.json"]
    paths[0].write_text(json.dumps(answer([0.6] * 30)))
    paths[1].write_text(json.dumps(answer([0.4] * 30)))
    out = tmp_path / "cmp.json"
    result = compare_cli(str(paths[0]), str(paths[1]), report=str(out))
    r = result["splits"]["eval_synth"]
    assert result["key"] == "embed_vs_reference" and r["difference"] == pytest.approx(0.2) and r["decided"]
    assert r["first_better"] == 30 and json.loads(out.read_text())["splits"]["eval_synth"]["clips"] == 30
    printed = capsys.readouterr().out
    assert "| eval_synth | 30 | 0.600 | 0.400 | +0.200 |" in printed and "undecided" not in printed
    same = compare_reports(answer([0.5] * 30), answer([0.5] * 30), key="transcript_vs_reference")
    assert "(undecided)" in format_comparison(same, ("a", "b"))


def test_the_command_reports_bad_input_in_one_line(tmp_path, capsys):
    from serve.cli import main

    answer = {"task": "answer", "splits": {"eval_synth": {"clips": 1, "per_clip": {"c": {"embed_vs_reference": 0.5}}}}}
    paths = {name: tmp_path / f"{name}.json" for name in ("repeat", "answer", "broken")}
    paths["repeat"].write_text(json.dumps(_repeat({"a": [0, 5]})))
    paths["answer"].write_text(json.dumps(answer))
    paths["broken"].write_text("{not json")
    cases = {
        "missing": [str(tmp_path / "nowhere.json"), str(paths["repeat"])],
        "not json": [str(paths["broken"]), str(paths["repeat"])],
        "other task": [str(paths["repeat"]), str(paths["answer"])],
        "unknown pair": [str(paths["answer"]), str(paths["answer"]), "--key", "embed_vs_nothing"],
    }
    for name, args in cases.items():
        assert main(["compare-projectors", *args]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("chorus compare-projectors: ") and err.count("\n") == 1, (name, err)
    assert main(["compare-projectors", str(paths["answer"]), str(paths["answer"])]) == 0
