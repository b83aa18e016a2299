"""``<suite>_stats.json``: the statistics of each leaderboard machine-readably (``to_json``, the
schema) and the file's layout (``suite_json``: the first leaderboard at the top level, other
backbones' under ``other_backbones``). Floats rounded so that float noise never reaches the bytes.
"""
from __future__ import annotations

import numpy as np

from .. import catalog
from .board import Board
from .stats import SuiteStats, cliques


def _r(x: float | None) -> float | None:
    """Rounded for the JSON (6 decimals, never -0.0, NaN as null): no float noise in the bytes."""
    if x is None or np.isnan(x):
        return None
    return round(float(x), 6) + 0.0


def _p(x: float | None) -> float | None:
    """p-values for the JSON: 6 significant digits (a p of 3.5e-06 keeps its digits)."""
    if x is None or np.isnan(x):
        return None
    return float(f"{float(x):.6g}")


def to_json(stats: SuiteStats) -> dict:
    """The machine-readable statistics of one leaderboard (the schema of ``<suite>_stats.json``).
    ``mean_ci95``: per row, the 95% t-interval over seeds of its mean (null: fewer than 3 seeds,
    or cells with different seeds), over ``mean_ci95_seeds`` seeds."""
    return {
        "tasks": list(stats.tasks),
        "rows": list(stats.rows),
        "left_out": list(stats.left_out),
        "failed_seeds": list(stats.failed),
        "omitted": stats.omitted or None,
        "average_rank": {k: _r(v) for k, v in stats.average_rank.items()},
        "friedman_p": _p(stats.friedman[1]) if stats.friedman else None,
        "pairwise": [{"a": p.a, "b": p.b, "mean_diff": _r(p.mean_diff), "ci95": [_r(p.ci95[0]), _r(p.ci95[1])],
                      "p": _p(p.p), "p_holm": _p(p.p_holm), "w_plus": _r(p.w_plus), "w_minus": _r(p.w_minus),
                      "favours": p.favours or None, "wins": p.wins, "ties": p.ties, "losses": p.losses}
                     for p in stats.pairs],
        "cliques": cliques(stats),
        "mean_ci95": {k: None if np.isnan(lo) else [_r(lo), _r(hi)] for k, (lo, hi) in stats.mean_ci95.items()},
        "mean_ci95_seeds": {k: stats.ci_seeds.get(k) for k in stats.mean_ci95},
    }


def suite_json(suite: catalog.Suite, boards: list[Board]) -> dict:
    """``<suite>_stats.json``: the statistics of the first leaderboard (the suite's own backbone when
    it has runs) at the top level, those of other backbones under ``other_backbones`` (rows with a
    failed seed left out, as in the markdown)."""
    first, *others = boards
    out = {"suite": suite.name, "backbone": first.backbone, **to_json(first.stats)}
    if others:
        out["other_backbones"] = {b.backbone: to_json(b.stats) for b in others}
    return out
