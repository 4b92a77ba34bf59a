"""Chorus benchmarks: `chorus bench` (bench.harness) and the older single-purpose scripts.

Every figure is measured side by side with its reference in one run (shared, noisy machines), as a
median over repeats with min/max; see bench/report.py for how rows, ratios and targets work.
"""
