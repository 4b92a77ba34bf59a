"""Benchmark figures, their verdicts, and the report files (JSON, markdown, PNG).

A `Figure` is one row of the report: our measurement and its reference, both measured in the same
run (the machines are shared and noisy, so only same-run comparisons mean anything), each a
`Stat` (median, min, max over repeats). The verdict compares the figure's `Target` against the
ratio ours / reference, the difference ours - reference, or our value alone. A figure that could
not be measured keeps `ours=None` and says why in `note`; it is never filled with a number.
"""

from __future__ import annotations

import json
import math
import operator
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

NOT_MEASURED = "not measured"
NO_TARGET = "–"
Comparison = Literal["ratio", "difference", "value"]
_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Stat:
    """Median, min and max of repeated measurements (n = how many)."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stat:
        values = [float(v) for v in samples]
        if not values:
            raise ValueError("a Stat needs at least one sample")
        return cls(statistics.median(values), min(values), max(values), len(values))

    @classmethod
    def exact(cls, value: float) -> Stat:
        """A quantity that is counted, not timed (bytes, an agreement rate): min = max = median."""
        return cls(float(value), float(value), float(value), 1)


@dataclass(frozen=True)
class Target:
    """`op value` on the ratio (ours / reference), the difference (ours - reference) or our value."""

    op: Literal[">=", "<="]
    value: float
    on: Comparison = "ratio"

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown target operator {self.op!r}; known: {', '.join(_OPS)}")

    def met(self, measured: float) -> bool:
        return _OPS[self.op](measured, self.value)

    def describe(self, unit: str) -> str:
        if self.on == "ratio":
            return f"{self.op} {self.value:g}×"
        if self.on == "difference":
            return f"Δ {self.op} {self.value:+g} {difference_unit(unit)}".rstrip()
        return f"{self.op} {self.value:g} {unit}".rstrip()


@dataclass
class Figure:
    """One report row. `ours` None means not measured (the reason is in `note`)."""

    section: str
    name: str
    unit: str
    ours: Stat | None
    reference: Stat | None = None
    reference_name: str = ""
    target: Target | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)  # section-specific detail kept in the JSON only

    @property
    def measured(self) -> bool:
        return self.ours is not None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.reference is None or self.reference.median == 0:
            return None
        return self.ours.median / self.reference.median

    @property
    def difference(self) -> float | None:
        if self.ours is None or self.reference is None:
            return None
        return self.ours.median - self.reference.median

    def compared(self) -> float | None:
        """The quantity the target is checked against."""
        if self.target is None or self.ours is None:
            return None
        return {"ratio": self.ratio, "difference": self.difference, "value": self.ours.median}[self.target.on]

    @property
    def met(self) -> bool | None:
        """True/False against the target; None with no target or nothing measured."""
        value = self.compared()
        return None if value is None else self.target.met(value)

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(ratio=_round(self.ratio), difference=_round(self.difference), met=self.met, measured=self.measured)
        return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def format_number(value: float) -> str:
    """Three significant figures, without scientific notation for the sizes reports hold."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    digits = max(0, 2 - magnitude)
    return f"{value:,.{digits}f}"


def format_stat(stat: Stat | None, unit: str) -> str:
    if stat is None:
        return NOT_MEASURED
    text = f"{format_number(stat.median)} {unit}".rstrip()
    if stat.n > 1 and stat.min != stat.max:
        text += f" ({format_number(stat.min)}–{format_number(stat.max)})"
    return text


def difference_unit(unit: str) -> str:
    """A difference of percentages is in percentage points."""
    return "pt" if unit == "%" else unit


def format_comparison(figure: Figure) -> str:
    if figure.target is not None and figure.target.on == "difference":
        difference = figure.difference
        return NO_TARGET if difference is None else f"{difference:+.2f} {difference_unit(figure.unit)}".rstrip()
    ratio = figure.ratio
    if ratio is None:
        return NO_TARGET
    return f"{ratio:.2f}×" if ratio >= 0.01 else f"{format_number(ratio)}×"


def format_met(figure: Figure) -> str:
    if figure.target is None:
        return NO_TARGET if figure.measured else NOT_MEASURED
    met = figure.met
    return NOT_MEASURED if met is None else ("yes" if met else "no")


def markdown_table(figures: Sequence[Figure]) -> str:
    """The main table: figure, ours, reference, ratio, target, met? (notes as footnotes)."""
    lines = ["| figure | ours | reference | ratio | target | met? |", "| --- | --- | --- | --- | --- | --- |"]
    notes: list[str] = []
    for figure in figures:
        name = figure.name
        if figure.note:
            notes.append(figure.note)
            name += f" [{len(notes)}]"
        if figure.reference is not None:
            reference = format_stat(figure.reference, figure.unit)
            reference += f" ({figure.reference_name})" if figure.reference_name else ""
        else:
            reference = figure.reference_name or NO_TARGET
        target = figure.target.describe(figure.unit) if figure.target is not None else NO_TARGET
        cells = [name, format_stat(figure.ours, figure.unit), reference, format_comparison(figure), target, format_met(figure)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"[{i}] {note}" for i, note in enumerate(notes, start=1))
    return "\n".join(lines)


@dataclass
class Report:
    """Everything one `chorus bench` run measured, with the conditions it ran under."""

    figures: list[Figure] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    sections: dict[str, dict] = field(default_factory=dict)  # per-section raw detail (JSON only)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def to_json(self) -> dict:
        return {
            "env": self.env,
            "figures": [f.to_json() for f in self.figures],
            "sections": self.sections,
            "notes": self.notes,
        }

    def markdown(self, plots: Sequence[str] = ()) -> str:
        env = self.env
        lines = ["# Chorus benchmark report", ""]
        if env:
            lines.append(
                f"{env.get('machine', '?')}, {env.get('cpus', '?')} CPUs, {env.get('threads', '?')} torch thread(s), "
                f"torch {env.get('torch', '?')}; load average {env.get('loadavg_start', '?')} → "
                f"{env.get('loadavg_end', '?')} (shared machine: read the ratios); sections: "
                f"{', '.join(env.get('sections', []))}{' (--quick)' if env.get('quick') else ''}; "
                f"{env.get('wall_s', '?')} s."
            )
            if env.get("llm_default_engine"):
                lines.extend(["", f"LLM engine where a row names none: {env['llm_default_engine']} (the config default)."])
            lines.append("")
        lines.append(
            "Every figure is the median over repeats with (min–max); its reference was measured in the same run."
        )
        lines.append("")
        lines.append(markdown_table(self.figures))
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        for key, detail in self.sections.items():
            if isinstance(detail, dict) and detail.get("markdown"):
                lines.extend(["", f"## {key}", "", detail["markdown"]])
        for plot in plots:
            lines.extend(["", f"![{Path(plot).stem}]({Path(plot).name})"])
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> list[Path]:
        """Write report.json, report.md and the plots (when matplotlib is installed)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        plots, why_not = write_plots(self, out_dir)
        if why_not:
            self.notes.append(why_not)
        json_path, md_path = out_dir / "report.json", out_dir / "report.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        md_path.write_text(self.markdown([str(p) for p in plots]))
        return [json_path, md_path, *plots]


def write_plots(report: Report, out_dir: Path) -> tuple[list[Path], str | None]:
    """PNG plots: every ratio against its target, and concurrency scaling when measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install -e '.[bench]')"

    written: list[Path] = []
    rows = [f for f in report.figures if f.ratio is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.2))
        names = [f"{f.section}: {f.name}" for f in rows]
        colors = ["tab:green" if f.met else ("tab:red" if f.met is False else "tab:gray") for f in rows]
        ax.barh(names, [f.ratio for f in rows], color=colors)
        for i, f in enumerate(rows):
            if f.target is not None and f.target.on == "ratio":
                ax.plot([f.target.value] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.axvline(1.0, color="gray", linewidth=0.5)
        ax.set_xscale("log")  # ratios span cache hits (~1e-4) to scaling (~4)
        ax.invert_yaxis()
        ax.set_xlabel("ours / reference (median, log scale)")
        ax.set_title("black tick: target; green met, red missed, grey no target", fontsize=9)
        fig.tight_layout()
        path = out_dir / "ratios.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    for key, detail in report.sections.items():
        curve = detail.get("curve") if isinstance(detail, dict) else None
        if not curve:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in curve.items():
            xs = [p["streams"] for p in points]
            ax.plot(xs, [p["aggregate_tok_s"] for p in points], marker="o", label=label)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("aggregate tok/s (median)")
        ax.set_xscale("log", base=2)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written, None
