"""bench/fusion_ttft.py's arithmetic on synthetic figures: the 5 s clip, the summary, the table. No timing is asserted."""

from __future__ import annotations

import numpy as np
import pytest

from bench.fusion_ttft import CLIP_S, MAX_RATIO, SAMPLE_RATE, fit, summarize, table


def test_fit_pads_with_silence_and_cuts_only_a_short_tail():
    short = np.ones(int(4.2 * SAMPLE_RATE), dtype=np.float32)
    padded = fit(short)
    assert len(padded) == CLIP_S * SAMPLE_RATE and padded.dtype == np.float32
    assert padded[: len(short)].all() and not padded[len(short) :].any()
    assert len(fit(np.ones(int(5.2 * SAMPLE_RATE), dtype=np.float32))) == CLIP_S * SAMPLE_RATE
    with pytest.raises(ValueError, match="would lose speech"):
        fit(np.ones(int(5.6 * SAMPLE_RATE), dtype=np.float32))


def _run(ttft: float, prep: float, decoder: float, tokens: int) -> dict:
    timing = {"ingress": ttft - 0.01, "prep": prep, "decoder": decoder}
    return {"ttft_s": ttft, "server_timing_s": timing, "prompt_tokens": tokens, "text": "ok"}


def test_summary_skips_the_warm_up_and_compares_medians():
    pairs = [{"warm_up": True, "embed": _run(5.0, 4.0, 0.9, 99), "transcript": _run(0.1, 0.05, 0.04, 45)}]
    for embed, transcript in ((0.4, 0.8), (0.5, 1.0), (0.3, 0.9)):
        pairs.append(
            {"warm_up": False, "embed": _run(embed, 0.1, 0.25, 99), "transcript": _run(transcript, 0.7, 0.08, 45)}
        )
    summary = summarize(pairs)
    assert summary["modes"]["embed"]["ttft_s"] == {"median": 0.4, "min": 0.3, "max": 0.5, "n": 3}
    assert summary["ratio_of_medians"] == pytest.approx(0.4 / 0.9, abs=1e-3)
    assert summary["ratio_per_pair"]["n"] == 3 and summary["met"] is (0.4 / 0.9 <= MAX_RATIO)
    hops = summary["modes"]["transcript"]["server_timing_s"]["client_to_ingress_hops"]
    assert hops["median"] == pytest.approx(0.01)
    lines = table({"summary": summary})
    assert lines[2].startswith("| embed | 400 | 300–500 |") and "| 99 |" in lines[2]
    assert "target ≤ 0.6×: met" in lines[-1]


def test_summary_without_server_timing_reports_no_breakdown():
    run = {"ttft_s": 1.0, "server_timing_s": {}, "prompt_tokens": None, "text": "ok"}
    summary = summarize([{"warm_up": False, "embed": run, "transcript": dict(run)}])
    assert summary["modes"]["embed"]["server_timing_s"] is None and summary["met"] is False
    assert "| embed | 1000 | 1000–1000 | – | – | – | – | – |" in table({"summary": summary})
