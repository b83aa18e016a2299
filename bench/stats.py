"""Which differences between leaderboard rows are real: average ranks, the Friedman test, paired
Wilcoxon tests with Holm's correction, and bootstrap confidence intervals. Pure functions on the
tidy frame of final runs (columns ``label``, ``task``, ``seed``, ``test_acc``), so that
``bench report`` and ``bench compare`` compute the same numbers.

Why these: a suite mean that differs by a few tenths says nothing without the spread behind it.
Tasks are the unit of the tests (Demšar 2006; Benavoli et al. 2016): per task, a row's cell is the
mean over its seeds; rows are ranked per task (1 = best, ties averaged) and the Friedman test asks
whether the ranks differ at all; each pair gets a two-sided Wilcoxon signed-rank test over the
tasks, Holm-corrected over all pairs. The tests come from scipy and statsmodels, never written here.

Confidence intervals come from a percentile bootstrap with fixed seeds (the same store gives the
same bytes): a row's suite mean resamples seeds within each task (the tasks are the suite's, fixed),
a pairwise mean difference resamples tasks and, within each, each row's seeds (the question the
Wilcoxon test asks: does A beat B on tasks like these?). With one seed per cell there is no seed
uncertainty to resample.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ACC = "test_acc"  # bench.tracking.TEST_ACC (not imported: this module needs nothing but frames)
ALPHA = 0.05
MIN_ROWS = 2
MIN_TASKS = 5
N_BOOT = 4000
BOOT_SEED = 15  # the bootstrap's base seed: fixed, so a rerun is byte-identical
TIE_DECIMALS = 1  # a task is a tie when both cells show the same value in the table (1 decimal)


# --------------------------------------------------------------------------- cells and ranks

def cell_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows x tasks: each cell the mean test accuracy over its seeds (NaN where a row has none)."""
    return runs.groupby(["label", "task"])[ACC].mean().unstack("task")


def average_ranks(matrix: pd.DataFrame) -> pd.Series:
    """Per row, the mean over tasks of its rank on the task (1 = highest accuracy, ties get the
    average of the ranks they span). ``matrix``: rows x tasks, no missing cells."""
    from scipy.stats import rankdata

    ranks = np.apply_along_axis(lambda col: rankdata(-col, method="average"), 0, matrix.to_numpy(float))
    return pd.Series(ranks.mean(axis=1), index=matrix.index)


def rank_order(ranks: pd.Series) -> list[str]:
    """Rows by average rank, then by name: the order of the tables and the JSON."""
    return sorted(ranks.index, key=lambda label: (round(float(ranks[label]), 9), label))


def friedman(matrix: pd.DataFrame) -> tuple[float, float] | None:
    """(chi-square, p) of the Friedman test over rows x tasks; None with fewer than 3 rows (the
    test is not defined for 2: then the one Wilcoxon test is the test)."""
    from scipy.stats import friedmanchisquare

    if matrix.shape[0] < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = friedmanchisquare(*matrix.to_numpy(float))
    stat, p = float(res.statistic), float(res.pvalue)
    return stat, (1.0 if np.isnan(p) else p)  # every task a tie everywhere: nothing differs


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p over paired per-task means (zero differences dropped,
    scipy's exact distribution when it applies); 1.0 when every difference is zero."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, float) - np.asarray(b, float)
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(wilcoxon(d).pvalue)
    return 1.0 if np.isnan(p) else p


def min_wilcoxon_p(n_tasks: int) -> float:
    """The smallest two-sided p a Wilcoxon test over ``n_tasks`` can reach (A wins every task)."""
    return min(1.0, 2.0 / 2 ** n_tasks)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels), in the order given."""
    from statsmodels.stats.multitest import multipletests

    if not pvalues:
        return []
    return [float(p) for p in multipletests(pvalues, alpha=ALPHA, method="holm")[1]]


def win_tie_loss(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """Tasks where A's cell is higher, equal, lower, at the table's precision."""
    ra, rb = np.round(np.asarray(a, float), TIE_DECIMALS), np.round(np.asarray(b, float), TIE_DECIMALS)
    return int((ra > rb).sum()), int((ra == rb).sum()), int((ra < rb).sum())


# --------------------------------------------------------------------------- bootstrap

def _seed(*parts: str) -> list[int]:
    """A seed for one stream of draws, from the names it is about: a row's CI never changes
    because another row was added to the store."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return [BOOT_SEED, int.from_bytes(digest[:8], "little")]


class Bootstrap:
    """Resampled cell means, drawn once per (row, task) and shared by every CI that uses the
    cell: ``cell(label, task)`` is an array of ``n_boot`` means of seeds drawn with replacement."""

    def __init__(self, runs: pd.DataFrame, n_boot: int = N_BOOT):
        self.n_boot = n_boot
        self._seeds = {key: np.sort(g[ACC].to_numpy(float))  # sorted: row order in the store never matters
                       for key, g in runs.groupby(["label", "task"])}
        self._cells: dict[tuple[str, str], np.ndarray] = {}

    def cell(self, label: str, task: str) -> np.ndarray:
        key = (label, task)
        if key not in self._cells:
            values = self._seeds[key]
            rng = np.random.default_rng(_seed("cell", label, task))
            draws = rng.integers(0, len(values), size=(self.n_boot, len(values)))
            self._cells[key] = values[draws].mean(axis=1)
        return self._cells[key]

    def mean_ci(self, label: str, tasks: list[str]) -> tuple[float, float]:
        """95% CI of the row's mean over ``tasks``, seeds resampled within each task."""
        means = np.mean([self.cell(label, t) for t in tasks], axis=0)
        return _percentiles(means)

    def diff_ci(self, a: str, b: str, tasks: list[str]) -> tuple[float, float]:
        """95% CI of mean over tasks of (A - B): tasks resampled (paired), then seeds within each."""
        diffs = np.stack([self.cell(a, t) - self.cell(b, t) for t in tasks], axis=1)  # n_boot x tasks
        rng = np.random.default_rng(_seed("tasks", *tasks))
        picks = rng.integers(0, len(tasks), size=(self.n_boot, len(tasks)))
        return _percentiles(np.take_along_axis(diffs, picks, axis=1).mean(axis=1))


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- pairs and the suite

@dataclass
class Pair:
    """A paired comparison of rows A and B on the tasks both have."""
    a: str
    b: str
    tasks: list[str]
    mean_diff: float  # mean over tasks of (A - B), points of accuracy
    ci95: tuple[float, float]
    p: float  # Wilcoxon, uncorrected (NaN with fewer than MIN_TASKS tasks)
    wins: int
    ties: int
    losses: int
    p_holm: float = float("nan")

    def verdict(self, p: float | None = None) -> str:
        """One line: 'A > B, p = 0.003, 14/19 tasks', or that no difference is shown."""
        p = self.p if p is None else p
        n = len(self.tasks)
        if np.isnan(p):
            return (f"no test: {self.a} and {self.b} share {n} task(s), fewer than {MIN_TASKS}; "
                    f"{self.a} better on {self.wins}/{n}")
        if p < ALPHA and self.mean_diff > 0:
            return f"{self.a} > {self.b}, p = {fmt_p(p)}, {self.wins}/{n} tasks"
        if p < ALPHA and self.mean_diff < 0:
            return f"{self.b} > {self.a}, p = {fmt_p(p)}, {self.losses}/{n} tasks"
        return (f"no significant difference between {self.a} and {self.b}: p = {fmt_p(p)}, "
                f"{self.a} better on {self.wins}/{n} tasks")


def pair(boot: Bootstrap, means: pd.DataFrame, a: str, b: str, tasks: list[str] | None = None) -> Pair:
    """Compare rows ``a`` and ``b`` of ``means`` (rows x tasks) on ``tasks`` (default: those both have)."""
    if tasks is None:
        both = means.loc[[a, b]].notna().all(axis=0)
        tasks = [t for t in means.columns if both[t]]
    x, y = means.loc[a, tasks].to_numpy(float), means.loc[b, tasks].to_numpy(float)
    wins, ties, losses = win_tie_loss(x, y)
    if not tasks:
        return Pair(a, b, [], float("nan"), (float("nan"), float("nan")), float("nan"), 0, 0, 0)
    return Pair(a, b, list(tasks), float(np.mean(x - y)), boot.diff_ci(a, b, list(tasks)),
                wilcoxon_p(x, y) if len(tasks) >= MIN_TASKS else float("nan"), wins, ties, losses)


@dataclass
class SuiteStats:
    """Everything the statistics section, the leaderboard's new columns and the JSON show."""
    tasks: list[str]  # the tasks every compared row has
    rows: list[str]  # compared rows, best average rank first
    left_out: list[str]  # rows without a run for every task (not compared)
    average_rank: dict[str, float]
    mean_ci95: dict[str, tuple[float, float]]  # every row, over its own tasks
    friedman: tuple[float, float] | None = None
    pairs: list[Pair] = field(default_factory=list)
    omitted: str = ""  # why there are no p-values ('' when there are)


def analyse(runs: pd.DataFrame, tasks: list[str], n_boot: int = N_BOOT) -> SuiteStats:
    """The statistics of one leaderboard. ``runs``: one run per (label, task, seed), finished;
    ``tasks``: its task columns. Compared: the rows with a cell for every task. Average ranks
    need 2 such rows; p-values need MIN_TASKS tasks too, else ``omitted`` says why."""
    means = cell_means(runs).reindex(columns=tasks)
    boot = Bootstrap(runs, n_boot)
    mean_ci = {label: boot.mean_ci(label, [t for t in tasks if pd.notna(means.at[label, t])])
               for label in sorted(means.index)}
    complete = means.notna().all(axis=1)
    compared = sorted(means.index[complete])
    left_out = sorted(means.index[~complete])
    stats = SuiteStats(list(tasks), compared, left_out, {}, mean_ci)
    if len(compared) < MIN_ROWS:
        stats.omitted = (f"{len(compared)} row(s) have a final run for every one of the {len(tasks)} tasks; "
                         f"ranks and tests need at least {MIN_ROWS}")
        return stats
    matrix = means.loc[compared]
    ranks = average_ranks(matrix)
    stats.rows = rank_order(ranks)
    stats.average_rank = {label: float(ranks[label]) for label in stats.rows}
    if len(tasks) < MIN_TASKS:
        stats.omitted = (f"the compared rows share {len(tasks)} task(s); tests over tasks need at least "
                         f"{MIN_TASKS} (a Wilcoxon test over {len(tasks)} tasks cannot reach p < "
                         f"{fmt_p(min_wilcoxon_p(len(tasks)))})")
        return stats
    stats.friedman = friedman(matrix)
    stats.pairs = [pair(boot, matrix, a, b, list(tasks))
                   for i, a in enumerate(stats.rows) for b in stats.rows[i + 1:]]
    for p, adjusted in zip(stats.pairs, holm([p.p for p in stats.pairs])):
        p.p_holm = adjusted
    return stats


def fmt(value: float, decimals: int, sign: bool = False) -> str:
    """Numbers as the reports print them: fixed decimals, '-' for missing, never '-0.0'."""
    if pd.isna(value):
        return "-"
    text = f"{value:{'+' if sign else ''}.{decimals}f}"
    return text if float(text) != 0 else f"{0:.{decimals}f}"


def fmt_p(p: float) -> str:
    """p-values as printed: 3 decimals, or 2 significant digits below 0.001."""
    if np.isnan(p):
        return "-"
    return f"{p:.2g}" if 0 < p < 0.001 else f"{p:.3f}"


def p_matrix(stats: SuiteStats) -> pd.DataFrame:
    """Holm-adjusted p-values as a symmetric rows x rows frame (1 on the diagonal)."""
    m = pd.DataFrame(1.0, index=stats.rows, columns=stats.rows)
    for p in stats.pairs:
        m.at[p.a, p.b] = m.at[p.b, p.a] = p.p_holm
    return m


# --------------------------------------------------------------------------- JSON

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
    """The machine-readable statistics of one leaderboard (the schema of ``<suite>_stats.json``)."""
    return {
        "tasks": list(stats.tasks),
        "rows": list(stats.rows),
        "left_out": list(stats.left_out),
        "omitted": stats.omitted or None,
        "average_rank": {k: _r(v) for k, v in stats.average_rank.items()},
        "friedman_p": _p(stats.friedman[1]) if stats.friedman else None,
        "pairwise": [{"a": p.a, "b": p.b, "mean_diff": _r(p.mean_diff), "ci95": [_r(p.ci95[0]), _r(p.ci95[1])],
                      "p": _p(p.p), "p_holm": _p(p.p_holm), "wins": p.wins, "ties": p.ties, "losses": p.losses}
                     for p in stats.pairs],
        "mean_ci95": {k: [_r(lo), _r(hi)] for k, (lo, hi) in stats.mean_ci95.items()},
    }
