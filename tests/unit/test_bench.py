"""`chorus bench`: report rows (ratio, target verdict, not-measured rows, markdown) on synthetic
figures, and a --quick smoke of the bandwidth and quantization sections on a tiny random Llama.

No timing is asserted anywhere: these machines are shared and noisy; only structure and arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.harness import SECTION_NAMES, parse_only, run_bench
from bench.llm_sections import SERVED_QUANTIZATION
from bench.report import NOT_MEASURED, Figure, Report, Stat, Target, format_number, markdown_table
from bench.service import _add_hop_figures, parse_server_timing
from serve.cli import build_parser
from tests.unit.test_llm import build_model, build_tokenizer

REPO = Path(__file__).resolve().parents[2]


def test_stat_is_median_min_max():
    stat = Stat.of([3.0, 1.0, 10.0, 2.0])
    assert (stat.median, stat.min, stat.max, stat.n) == (2.5, 1.0, 10.0, 4)
    with pytest.raises(ValueError):
        Stat.of([])


def test_ratio_and_target_on_ratio():
    fig = Figure("decode", "tok/s", "tok/s", Stat.of([6.0]), Stat.of([10.0]), "llama.cpp", Target(">=", 0.5))
    assert fig.ratio == pytest.approx(0.6)
    assert fig.met is True
    fig.ours = Stat.of([4.0])
    assert fig.met is False


def test_target_on_difference_and_on_value():
    wer = Figure("enc", "WER", "pt", Stat.exact(6.5), Stat.exact(5.8), "full", Target("<=", 1.0, on="difference"))
    assert wer.difference == pytest.approx(0.7) and wer.met is True
    wer.ours = Stat.exact(7.0)
    assert wer.met is False
    agreement = Figure("quant", "agreement", "%", Stat.exact(96.0), None, "fp32", Target(">=", 95.0, on="value"))
    assert agreement.ratio is None and agreement.met is True


def test_unknown_target_operator_is_refused():
    with pytest.raises(ValueError, match="unknown target operator"):
        Target("==", 1.0)


def test_not_measured_rows_never_get_a_verdict_or_a_number():
    missing_ours = Figure("decode", "tok/s", "tok/s", None, note="llama.cpp not installed")
    missing_reference = Figure("decode", "ours", "tok/s", Stat.of([5.0]), None, "llama.cpp not installed", Target(">=", 0.5))
    assert missing_ours.met is None and missing_ours.ratio is None
    assert missing_reference.met is None and missing_reference.ratio is None
    table = markdown_table([missing_ours, missing_reference])
    rows = table.splitlines()
    assert rows[2].split(" | ")[1] == NOT_MEASURED
    assert rows[3].endswith(f"| {NOT_MEASURED} |")  # a target that could not be checked is not "no"
    assert "llama.cpp not installed" in rows[3]
    assert "[1] llama.cpp not installed" in table  # notes become numbered footnotes


def test_markdown_table_columns_and_cells():
    fig = Figure("quant", "decode tok/s, int4", "tok/s", Stat.of([20.0, 22.0, 30.0]), Stat.of([10.0, 11.0, 12.0]),
                 "fp32", Target(">=", 1.0))
    no_target = Figure("bandwidth", "copy", "GB/s", Stat.of([9.0]))
    table = markdown_table([fig, no_target]).splitlines()
    assert table[0] == "| figure | ours | reference | ratio | target | met? |"
    assert table[2] == "| decode tok/s, int4 | 22.0 tok/s (20.0–30.0) | 11.0 tok/s (10.0–12.0) (fp32) | 2.00× | >= 1× | yes |"
    assert table[3] == "| copy | 9.00 GB/s | – | – | – | – |"


def test_format_number_three_significant_figures():
    assert [format_number(v) for v in (0.01234, 1.234, 12.34, 1234.5)] == ["0.0123", "1.23", "12.3", "1,234"]


def test_report_writes_json_and_markdown_with_sections(tmp_path):
    report = Report(env={"threads": 1})
    report.add(Figure("quant", "weight memory, int8", "MB", Stat.exact(220), Stat.exact(538), "fp32", Target("<=", 0.35)))
    report.sections["concurrency"] = {"markdown": "| engine | streams |\n| --- | --- |", "curve": {}}
    files = report.write(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["figures"][0]["met"] is False and data["figures"][0]["ratio"] == pytest.approx(220 / 538, abs=1e-4)
    markdown = (tmp_path / "report.md").read_text()
    assert "| weight memory, int8 | 220 MB | 538 MB (fp32) | 0.41× | <= 0.35× | no |" in markdown
    assert "## concurrency" in markdown
    assert {f.name for f in files} >= {"report.json", "report.md"}


def test_only_parses_in_run_order_and_refuses_unknown_sections():
    assert parse_only("quant,decode") == ["decode", "quant"]
    assert parse_only(None) == list(SECTION_NAMES)
    with pytest.raises(ValueError, match="unknown bench section"):
        parse_only("decode,warp")


def test_cli_has_a_bench_subcommand():
    args = build_parser().parse_args(["bench", "--only", "quant", "--quick", "--threads", "2"])
    assert (args.only, args.quick, args.threads) == ("quant", True, 2)


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llm")
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_server_timing_header_parses_to_seconds():
    header = 'ingress;dur=21.5;desc="ingress: request to first token", decoder;dur=150.0;desc="a, b"'
    assert parse_server_timing(header) == {"ingress": 0.0215, "decoder": 0.150}
    assert parse_server_timing(None) == {} and parse_server_timing("cache;desc=hit") == {}


def test_hop_figures_split_the_api_ttft():
    report = Report()
    timings = [{"ingress": 0.100, "prep": 0.002, "decoder": 0.095}, {"ingress": 0.120, "prep": 0.004, "decoder": 0.110}]
    _add_hop_figures(report, [0.104, 0.130], [0.094, 0.108], timings, "HAProxy")
    split = {f.name: f.ours.median for f in report.figures}
    assert split["ingress work before the decoder call, HAProxy"] == pytest.approx(0.003)
    assert split["Serve hops, ingress ↔ decoder, HAProxy"] == pytest.approx(0.0045)  # 3 and 6 ms
    assert split["Serve hops, client ↔ ingress, HAProxy"] == pytest.approx(0.007)  # 4 and 10 ms
    assert split["TTFT inside the decoder replica, HAProxy"] == pytest.approx(0.1025)
    old = Report()  # a header without `prep` (an older ingress): no split rather than a wrong one
    _add_hop_figures(old, [0.104], [0.094], [{"ingress": 0.100, "decoder": 0.095}], "HAProxy")
    assert [f.ours for f in old.figures] == [None]


def test_concurrency_measures_the_served_cpu_default():
    """The int4 concurrency rows must describe what `make serve` runs, not a mode nobody deploys."""
    config = yaml.safe_load((REPO / "deploy" / "local.yaml").read_text())
    assert config["applications"][0]["args"]["llm"]["quantization"] == SERVED_QUANTIZATION


def test_quick_bandwidth_and_quant_sections_on_a_tiny_llama(tmp_path, tiny_llm_dir):
    import torch

    from bench.context import BenchOptions

    threads = torch.get_num_threads()
    try:
        report, files = run_bench(["bandwidth", "quant"], BenchOptions(quick=True, model=str(tiny_llm_dir)),
                                  tmp_path, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    by_name = {f.name: f for f in report.figures}
    assert not [f for f in report.figures if f.note.startswith("section failed")], [f.note for f in report.figures]
    assert by_name["copy bandwidth (read + write)"].ours.median > 0
    bound = by_name["decode tok/s vs bandwidth bound (none)"]
    assert bound.ours.n == 2 and bound.reference.median > 0 and bound.ratio > 0
    for mode in ("int8", "int4", "w8a8"):
        memory = by_name[f"weight memory, {mode}"]
        assert memory.ratio < 1.0 and memory.met is not None  # quantized weights are smaller than fp32
        agreement = by_name[f"greedy agreement with fp32, {mode}"]
        assert 0.0 <= agreement.ours.median <= 100.0
        assert by_name[f"decode tok/s, {mode}"].reference_name == "fp32"
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["env"]["sections"] == ["bandwidth", "quant"] and written["env"]["quick"] is True
    assert len(written["figures"]) == len(report.figures)
    assert "| figure | ours | reference | ratio | target | met? |" in (tmp_path / "report.md").read_text()


def test_llama_cpp_batching_without_llama_cpp_is_a_not_measured_row(monkeypatch):
    """Where the optional `bench` extra is missing, the reference row says so instead of failing."""
    import sys

    from bench.context import BenchContext, BenchOptions
    from bench.llm_sections import _llama_cpp_batching

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp → ImportError
    ctx = BenchContext(BenchOptions(quick=True))
    assert _llama_cpp_batching(ctx, (1, 2), 1, 4, {}, []) == {}
    (row,) = ctx.report.figures
    assert row.ours is None and "llama.cpp not installed" in row.note


def test_new_questions_never_repeat_past_the_system_prompt():
    from bench.context import new_question

    first, second = new_question("Where is my parcel?"), new_question("Where is my parcel?")
    assert first != second and first.endswith("Where is my parcel?")
