"""Evaluation figures: WER per group with bootstrap intervals, and a per-utterance scatter.

Figures are built on an Agg canvas without pyplot, so nothing global changes and nothing is kept
open; kedro-datasets' MatplotlibDataset saves them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SYSTEMS = ("base", "adapter")


def _bar_values(entries: list[dict], system: str) -> tuple[list[float], list[list[float]]]:
    heights, low_err, high_err = [], [], []
    for entry in entries:
        rate = entry[system]
        est = rate["estimate"]
        heights.append(0.0 if est is None else 100 * est)
        if est is None or rate["low"] is None:
            low_err.append(0.0)
            high_err.append(0.0)
        else:
            low_err.append(max(0.0, 100 * (est - rate["low"])))
            high_err.append(max(0.0, 100 * (rate["high"] - est)))
    return heights, [low_err, high_err]


def plot_group_wer(statistics: dict, group_columns: Sequence[str] = ("speaker",), title: str = "") -> Figure:
    """Bars of normalised WER, base vs adapter, with bootstrap-interval error bars.

    One panel per group column; each panel shows "all" (the whole test split) followed by the
    column's groups, two bars each. `statistics` is `evaluation.statistics_block(...)["statistics"]`.
    """
    columns = [c for c in group_columns if f"by_{c}" in statistics] or []
    panels = columns or [None]
    widths = [1 + len(statistics.get(f"by_{c}", {})) for c in columns] or [1]
    fig = Figure(figsize=(max(6.0, 0.9 * sum(widths) + 2), 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    level = round(100 * statistics["overall"]["wer"]["base"]["confidence"])
    for ax, column in zip(axes, panels):
        groups = statistics.get(f"by_{column}", {}) if column else {}
        labels = ["all", *groups]
        entries = [statistics["overall"]["wer"], *(g["wer"] for g in groups.values())]
        width = 0.38
        for k, system in enumerate(SYSTEMS):
            heights, yerr = _bar_values(entries, system)
            xs = [i + (k - 0.5) * width for i in range(len(labels))]
            ax.bar(xs, heights, width, yerr=yerr, capsize=3, label=system)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center",
                           fontsize=8)
        ax.set_title(f"by {column}" if column else "overall", fontsize=10)
        ax.set_ylabel("WER (%, normalised)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(title=f"{level}% bootstrap CI")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_utterance_scatter(base_wer: Sequence[float | None], adapter_wer: Sequence[float | None],
                           labels: Sequence[str] | None = None, title: str = "") -> Figure:
    """Per-utterance WER, base (x) against adapter (y), with the y = x line.

    Points below the line improved. Utterances without a WER (empty reference) are left out;
    WERs above 150% are drawn at 150% (marked in the axis label). `labels` colours points by group.
    """
    cap = 1.5
    points = [(b, a, (labels[i] if labels is not None else "")) for i, (b, a) in enumerate(zip(base_wer, adapter_wer))
              if b is not None and a is not None and not (math.isnan(b) or math.isnan(a))]
    fig = Figure(figsize=(5.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for group in sorted({p[2] for p in points}):
        xs = [100 * min(p[0], cap) for p in points if p[2] == group]
        ys = [100 * min(p[1], cap) for p in points if p[2] == group]
        ax.scatter(xs, ys, s=16, alpha=0.7, label=group or None)
    top = 100 * cap if any(max(p[0], p[1]) > 1 for p in points) else 100.0
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(-2, top + 2)
    ax.set_ylim(-2, top + 2)
    ax.set_xlabel("base WER per utterance (%, capped at 150)")
    ax.set_ylabel("adapter WER per utterance (%, capped at 150)")
    ax.set_title(title or f"{len(points)} utterances (below the line: improved)", fontsize=10)
    if labels is not None and len({p[2] for p in points}) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
