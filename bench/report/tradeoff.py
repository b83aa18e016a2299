"""Trade-off plots of the leaderboard: mean accuracy against trainable parameters, training
throughput and peak training memory, with the Pareto front marked. A method is only worth its
cost if no other row is at least as accurate and cheaper; the front names the rows that are.

Input: the report's per-row summary (``mean_tasks``, ``complete``, ``ranked``, the metric columns
of ``bench.tracking`` and ``backbone``). The front is computed per backbone (rows of two
backbones are never compared, as in the tables) among rows whose mean is ranked (every task,
every seed); a linear probe's throughput (cached features) is never on the throughput front.
PNGs are drawn without timestamps or version metadata: the same summary gives the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import tracking
from .png import figure, png_bytes


@dataclass(frozen=True)
class Axis:
    key: str  # file suffix: <suite>_<key>.png
    column: str
    scale: float
    better: str  # "min" or "max"
    label: str
    title: str
    log: bool = True


AXES = (
    Axis("params", tracking.PARAMS_TOTAL, 1e-6, "min", "Trainable parameters with heads (M, log scale)",
         "trainable parameters"),
    Axis("throughput", tracking.TRAIN_IMG_PER_S, 1.0, "max", "Training throughput (img/s, log scale)",
         "training throughput"),
    Axis("memory", tracking.PEAK_MEM_MB, 1.0, "min", "Peak training memory (MB, log scale)",
         "peak training memory"),
)


def pareto_front(points: pd.DataFrame, x: str, y: str, x_better: str = "min") -> list[str]:
    """Index labels of the points no other point dominates: another point dominates one when it
    has y at least as high and x at least as good (lower for ``x_better='min'``), and is strictly
    better in one of them. Identical points are all on the front. Sorted by x, best x first."""
    pts = points[[x, y]].dropna()
    xs = pts[x].to_numpy(float) * (1.0 if x_better == "min" else -1.0)  # lower is better from here
    ys = pts[y].to_numpy(float)
    on = []
    for i in range(len(pts)):
        dominated = np.any((xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i])))
        if not dominated:
            on.append(i)
    order = sorted(on, key=lambda i: (xs[i], -ys[i], str(pts.index[i])))
    return [pts.index[i] for i in order]


def eligible(summary: pd.DataFrame, axis: Axis) -> pd.DataFrame:
    """Rows that may be on the axis's front: ranked mean, a positive value of the metric, and for
    throughput no linear probe (its training time excludes the backbone)."""
    ok = summary["ranked"].astype(bool) & (summary[axis.column] > 0) & summary["mean_tasks"].notna()
    if axis.key == "throughput":
        ok &= summary[tracking.PARAMS_BACKBONE] > 0
    return summary[ok]


def fronts(summary: pd.DataFrame, axis: Axis) -> dict[str, list[str]]:
    """Per backbone (in the summary's order), the row labels on the front."""
    out = {}
    for backbone in dict.fromkeys(summary["backbone"]):
        rows = eligible(summary[summary["backbone"] == backbone], axis)
        out[backbone] = pareto_front(rows, axis.column, "mean_tasks", axis.better) if not rows.empty else []
    return out


def plot_png(summary: pd.DataFrame, axis: Axis, title: str) -> bytes:
    """Mean accuracy against one cost (log x), one labelled point per row (hollow and ‡ when its
    mean misses tasks), the front of each backbone ringed and joined by a dashed step line."""
    fig = figure(6.4, 4.8)
    ax = fig.add_subplot()
    points = summary.assign(x=summary[axis.column] * axis.scale)
    points = points[(points["x"] > 0) & points["mean_tasks"].notna()]
    for i, (label, row) in enumerate(points.iterrows()):
        color = f"C{i % 10}"
        ax.scatter(row["x"], row["mean_tasks"], color=color if row["complete"] else "none", edgecolors=color)
        ax.annotate(label if row["complete"] else f"{label} ‡", (row["x"], row["mean_tasks"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    styles = ("--", ":", "-.")
    for j, (backbone, front) in enumerate(fronts(summary, axis).items()):
        if not front:
            continue
        xs, ys = points.loc[front, "x"].to_numpy(), points.loc[front, "mean_tasks"].to_numpy()
        name = "Pareto front" + (f" ({backbone})" if summary["backbone"].nunique() > 1 else "")
        ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="k", linewidths=1.2, label=name)
        ax.step(xs, ys, where="post", color="k",  # the best mean at a cost at most x
                linestyle=styles[j % len(styles)], linewidth=1)
    if not points.empty:
        if points["x"].nunique() == 1:  # one cost: give the log axis a decade around it
            ax.set_xlim(points["x"].iloc[0] / 3, points["x"].iloc[0] * 3)
        ax.set_xscale("log")
        if any(fronts(summary, axis).values()):
            ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(axis.label)
    ax.set_ylabel("Mean test accuracy over tasks (%)")
    ax.set_title(f"{title}: accuracy vs {axis.title}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def section(summary: pd.DataFrame, suite_name: str, title: str,
            level: str = "##") -> tuple[list[str], dict[str, bytes]]:
    """The trade-offs section (markdown lines) and its PNGs by file name. The parameters plot is
    always drawn (``<suite>_params.png``); throughput and memory only when some run recorded them."""
    lines = [f"{level} Trade-offs", ""]
    pngs, notes = {}, []
    several = summary["backbone"].nunique() > 1
    for axis in AXES:
        has = (summary[axis.column] > 0).any()
        if not has and axis.key != "params":
            notes.append(f"No {axis.title} plot: no final run recorded it"
                         + (" (peak memory is measured on GPU only)." if axis.key == "memory" else "."))
            continue
        name = f"{suite_name}_{axis.key}.png"
        pngs[name] = plot_png(summary, axis, title)
        lines += [f"![Mean accuracy vs {axis.title}]({name})", ""]
        for backbone, front in fronts(summary, axis).items():
            where = f" on `{backbone}`" if several else ""
            text = ", ".join(front) if front else "none (no row with a ranked mean)"
            notes.append(f"Pareto front, accuracy vs {axis.title}{where}: {text}.")
    notes.append("Pareto front: the rows that no other row beats on both axes (a mean at least as high at a cost "
                 "at least as low, and better in one), cheapest first; ringed in the plots. Only rows with a ranked "
                 "mean (every task, every seed) can be on it, and a linear probe's throughput (training on cached "
                 "features) never is. Hollow points (‡) miss tasks.")
    lines += [f"- {n}" for n in notes]
    return lines, pngs
