"""Which differences between leaderboard rows are real: average ranks, the Friedman test, paired
Wilcoxon tests with Holm's correction, a t-interval over seeds for each row's mean and bootstrap
intervals for pairwise differences. Pure functions on the tidy frame of final runs (columns
``label``, ``task``, ``seed``, ``test_acc``), so that ``bench report`` and ``bench compare`` compute
the same numbers.

Why these: a suite mean that differs by a few tenths says nothing without the spread behind it.
Tasks are the unit of the tests (Demšar 2006; Benavoli et al. 2016): per task, a row's cell is the
mean over its seeds; rows are ranked per task (1 = best, ties averaged) and the Friedman test asks
whether the ranks differ at all; each pair gets a two-sided Wilcoxon signed-rank test over the
tasks with zero differences split between the signs (``zero_method="zsplit"``, as Demšar 2006
recommends), Holm-corrected over all pairs. A significant pair's direction is that of the signed
ranks (W+, the rank sum of the tasks A wins, against W−), the statistic the test is about, never
the sign of the mean difference: many small wins can outweigh a few large losses, and the verdict
then notes that the mean says otherwise. Rows with a failed seed (a cell's mean over the seeds
that survived) and rows that miss a task are left out of the ranks and the tests. The tests come
from scipy and statsmodels, never written here.

Intervals: a row's "95% CI (seeds)" is a t-interval over seeds: per seed, the row's mean over its
tasks; the interval of their mean with n - 1 degrees of freedom (n seeds, every cell with the same
seeds; none below 3 seeds: a 2-seed percentile bootstrap is about 30% too narrow, a t-interval over
2 seeds has 1 degree of freedom, and one seed has no spread at all). It says how far the Mean would
move if the suite were rerun with other seeds, the tasks fixed. A pairwise mean difference gets a
percentile bootstrap with fixed seeds (the same store gives the same bytes) that resamples tasks
and, within each, each row's seeds (the question the Wilcoxon test asks: does A beat B on tasks
like these?).
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .format import fmt, fmt_p

ACC = "test_acc"  # bench.tracking.TEST_ACC (not imported: this module needs nothing but frames)
ALPHA = 0.05
MIN_ROWS = 2
MIN_TASKS = 5
MIN_SEEDS_CI = 3  # fewer seeds: no interval over seeds (see the module docstring)
N_BOOT = 4000
BOOT_SEED = 15  # the bootstrap's base seed: fixed, so a rerun is byte-identical
TIE_DECIMALS = 1  # a task is a tie when both cells show the same value in the table (1 decimal)
DIFF_DECIMALS = 9  # per-task differences are rounded here first: float noise is never a nonzero difference


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


def differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-task A - B, rounded to DIFF_DECIMALS (so that equal cells are a zero difference)."""
    d = np.round(np.asarray(a, float) - np.asarray(b, float), DIFF_DECIMALS)
    if d.size and not np.all(np.isfinite(d)):
        raise ValueError("per-task means must be finite (a missing cell is no difference)")
    return d + 0.0  # never -0.0


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p over paired per-task means, zero differences split between
    the signs (``zero_method="zsplit"``, Demšar 2006). scipy picks the exact distribution when
    there are no ties or zeros, else up to 13 tasks the exact permutation distribution (all 2^n
    sign flips), above that the normal approximation with the tie correction. 1.0 when every
    difference is zero."""
    from scipy.stats import wilcoxon

    d = differences(a, b)
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(wilcoxon(d, zero_method="zsplit").pvalue)
    return 1.0 if np.isnan(p) else p


def signed_ranks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(W+, W−): the sums of the ranks of |A - B| (ties averaged) over the tasks where A is higher
    and where B is, each zero difference's rank split half to each ("zsplit"). The two-sided
    Wilcoxon statistic is the smaller; the larger names the row the test favours."""
    from scipy.stats import rankdata

    d = differences(a, b)
    if not d.size:
        return 0.0, 0.0
    ranks = rankdata(np.abs(d), method="average")
    zeros = ranks[d == 0].sum() / 2
    return float(ranks[d > 0].sum() + zeros), float(ranks[d < 0].sum() + zeros)


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


# --------------------------------------------------------------------------- intervals over seeds

def seed_means(runs: pd.DataFrame, label: str, tasks: list[str]) -> pd.Series | None:
    """Per seed (sorted), the row's mean accuracy over ``tasks`` with that seed: the row's Mean as
    one rerun of the suite would give it. None when the row's cells on ``tasks`` do not all have
    the same seeds (a failed seed, or seeds that differ between tasks): no seed then stands for a
    whole rerun."""
    mine = runs[(runs["label"] == label) & runs["task"].isin(list(tasks))]
    if mine.empty or not tasks:
        return None
    table = mine.groupby(["task", "seed"])[ACC].mean().unstack("seed")
    table = table.reindex(index=list(tasks)).sort_index(axis=1)
    if table.isna().to_numpy().any():
        return None
    return pd.Series(table.to_numpy(float).mean(axis=0), index=table.columns)


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """95% t-interval of the mean of ``values``: mean ± t(0.975, n - 1) × s / √n (scipy); NaN with
    fewer than MIN_SEEDS_CI values; zero width when they are all equal."""
    from scipy.stats import t

    values = np.asarray(values, float)
    n = len(values)
    if n < MIN_SEEDS_CI:
        return float("nan"), float("nan")
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    if sd == 0:
        return mean, mean
    lo, hi = t.interval(0.95, n - 1, loc=mean, scale=sd / np.sqrt(n))
    return float(lo), float(hi)


def seed_ci(runs: pd.DataFrame, label: str, tasks: list[str]) -> tuple[tuple[float, float], int | None]:
    """(the 95% t-interval over seeds of the row's mean over ``tasks``, the number of seeds it is
    over): NaN bounds with fewer than MIN_SEEDS_CI seeds, and with a seed count of None where
    the cells do not all have the same seeds (``seed_means``)."""
    per_seed = seed_means(runs, label, tasks)
    if per_seed is None:
        return (float("nan"), float("nan")), None
    return t_interval(per_seed.to_numpy(float)), len(per_seed)


# --------------------------------------------------------------------------- bootstrap

def _seed(*parts: str) -> list[int]:
    """A seed for one stream of draws, from the names it is about: a pair's CI never changes
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
    w_plus: float = float("nan")  # signed-rank sum of the tasks A wins (zero differences split)
    w_minus: float = float("nan")  # ... and of those B wins

    @property
    def favours(self) -> str:
        """The row the signed ranks favour ('' when W+ = W−): the direction of the test."""
        if np.isnan(self.w_plus) or np.isnan(self.w_minus) or self.w_plus == self.w_minus:
            return ""
        return self.a if self.w_plus > self.w_minus else self.b

    @property
    def mean_disagrees(self) -> bool:
        """Whether the mean difference points the other way from the signed ranks."""
        return bool(self.favours) and (self.mean_diff < 0 if self.favours == self.a else self.mean_diff > 0)

    def verdict(self, p: float | None = None, p_name: str = "p") -> str:
        """One line: 'A > B, p = 0.003, 14/19 tasks', or that no difference is shown. ``p``: the p
        to judge by (default: the uncorrected one), printed as ``p_name``. The winner is the row
        the signed ranks favour; a note follows where the mean difference favours the other."""
        p = self.p if p is None else p
        n = len(self.tasks)
        if np.isnan(p):
            return (f"no test: {self.a} and {self.b} share {n} task(s), fewer than {MIN_TASKS}; "
                    f"{self.a} better on {self.wins}/{n}")
        winner = self.favours
        if p < ALPHA and winner:
            loser = self.b if winner == self.a else self.a
            won, (w_win, w_lose) = ((self.wins, (self.w_plus, self.w_minus)) if winner == self.a
                                    else (self.losses, (self.w_minus, self.w_plus)))
            text = f"{winner} > {loser}, {p_name} = {fmt_p(p)}, {won}/{n} tasks"
            if self.mean_disagrees:
                diff = self.mean_diff if winner == self.a else -self.mean_diff
                text += (f"; note: the mean difference favours {loser} ({winner} − {loser} = "
                         f"{fmt(diff, 2, sign=True)} points), the signed ranks {winner} (rank sums "
                         f"{w_win:g} against {w_lose:g})")
            return text
        return (f"no significant difference between {self.a} and {self.b}: {p_name} = {fmt_p(p)}, "
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
    w_plus, w_minus = signed_ranks(x, y)
    return Pair(a, b, list(tasks), float(np.mean(x - y)), boot.diff_ci(a, b, list(tasks)),
                wilcoxon_p(x, y) if len(tasks) >= MIN_TASKS else float("nan"), wins, ties, losses,
                w_plus=w_plus, w_minus=w_minus)


@dataclass
class SuiteStats:
    """Everything the statistics section, the leaderboard's new columns and the JSON show."""
    tasks: list[str]  # the tasks every compared row has
    rows: list[str]  # compared rows, best average rank first
    left_out: list[str]  # rows without a run for every task (not compared)
    average_rank: dict[str, float]
    mean_ci95: dict[str, tuple[float, float]]  # every row, over its own tasks: t-interval over seeds (NaN: none)
    friedman: tuple[float, float] | None = None
    pairs: list[Pair] = field(default_factory=list)
    omitted: str = ""  # why there are no p-values ('' when there are)
    failed: list[str] = field(default_factory=list)  # rows with a failed seed (not compared)
    ci_seeds: dict[str, int | None] = field(default_factory=dict)  # seeds behind each mean_ci95 (None: cells differ)


def analyse(runs: pd.DataFrame, tasks: list[str], n_boot: int = N_BOOT, failed: Iterable[str] = ()) -> SuiteStats:
    """The statistics of one leaderboard. ``runs``: one run per (label, task, seed), finished;
    ``tasks``: its task columns; ``failed``: rows with a seed whose final fit failed (their cells
    are over the seeds that survived). Compared: the rows with a cell for every task and no failed
    seed. Average ranks need 2 such rows; p-values need MIN_TASKS tasks too, else ``omitted`` says
    why."""
    means = cell_means(runs).reindex(columns=list(tasks))
    boot = Bootstrap(runs, n_boot)
    ci, ci_seeds = {}, {}
    for label in sorted(means.index):
        ci[label], ci_seeds[label] = seed_ci(runs, label, [t for t in tasks if pd.notna(means.at[label, t])])
    complete = means.notna().all(axis=1)
    flagged = sorted(set(failed) & set(means.index))
    compared = sorted(label for label in means.index[complete] if label not in flagged)
    left_out = sorted(means.index[~complete])
    stats = SuiteStats(list(tasks), compared, left_out, {}, ci, failed=flagged, ci_seeds=ci_seeds)
    if len(compared) < MIN_ROWS:
        seeds = " and every seed" if flagged else ""
        stats.omitted = (f"{len(compared)} row(s) have a final run for every one of the {len(tasks)} tasks{seeds}; "
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


def cliques(stats: SuiteStats) -> list[list[str]]:
    """The bars of the critical-difference diagram: the maximal groups of two or more compared
    rows in which no pair differs significantly (p (Holm) ≥ ALPHA), as scikit-posthocs finds them
    (maximal cliques of the graph of non-significant pairs). Each group in rank order; the groups
    by their best member's place, then their worst's."""
    rows = list(stats.rows)
    place = {label: i for i, label in enumerate(rows)}
    same = {label: set() for label in rows}
    for p in stats.pairs:
        if not p.p_holm < ALPHA:
            same[p.a].add(p.b)
            same[p.b].add(p.a)
    found: list[list[str]] = []

    def extend(clique: set, candidates: set, done: set) -> None:  # Bron–Kerbosch with a pivot
        if not candidates and not done:
            if len(clique) > 1:
                found.append(sorted(clique, key=place.__getitem__))
            return
        pivot = max(candidates | done, key=lambda v: (len(candidates & same[v]), -place[v]))
        for v in sorted(candidates - same[pivot], key=place.__getitem__):
            extend(clique | {v}, candidates & same[v], done & same[v])
            candidates = candidates - {v}
            done = done | {v}

    if stats.pairs:
        extend(set(), set(rows), set())
    return sorted(found, key=lambda c: (place[c[0]], place[c[-1]], [place[x] for x in c]))


def passed_over(stats: SuiteStats, clique: list[str]) -> list[str]:
    """Compared rows that are not in ``clique`` but whose average rank lies within its bar's span
    (a bar through a group that is not contiguous in rank): in rank order."""
    ranks = [stats.average_rank[label] for label in clique]
    lo, hi = min(ranks), max(ranks)
    return [label for label in stats.rows if label not in clique and lo <= stats.average_rank[label] <= hi]


def p_matrix(stats: SuiteStats) -> pd.DataFrame:
    """Holm-adjusted p-values as a symmetric rows x rows frame (1 on the diagonal)."""
    m = pd.DataFrame(1.0, index=stats.rows, columns=stats.rows)
    for p in stats.pairs:
        m.at[p.a, p.b] = m.at[p.b, p.a] = p.p_holm
    return m
