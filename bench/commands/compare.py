"""`bench compare A B`: a paired comparison of two leaderboard rows on the tasks both have, for
when the question is one pair, not the whole table: the mean difference with its 95% CI, per-task
wins, ties and losses, the Wilcoxon signed-rank test (zero differences split) with its signed-rank
sums, and a one-line verdict whose direction is that of the signed ranks.

Rows are named as in the leaderboard (``lora``, ``vpt (mode=shallow)``; with several backbones,
rows off the suite's carry ``[backbone]``) and their cells are the leaderboard's: the same runs,
the same latest-run-per-seed rule (``bench.report.board_runs``), the same numbers as
``bench.report.stats``.

Which p the verdict uses: picking a pair after looking at the leaderboard is one of its many
comparisons, so by default the p is Holm-corrected over the leaderboard's pairs (every pair of the
rows its statistics compare: the p (Holm) the report shows for the same pair). Where A or B is not
among those rows (a missing task, a failed seed) or the two are on different backbones'
leaderboards, the family is those leaderboards' pairs plus this one. ``--planned`` says the
comparison was chosen before seeing any result: then its own, uncorrected p is the test.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from tabulate import tabulate

from .. import catalog, report, tracking
from ..report import stats as st
from ..errors import UserError


def suite_rows(suite: catalog.Suite, all_runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the suite's leaderboards count, one per (row, task, seed), labelled by row name."""
    boards = report.by_backbone(suite, all_runs)
    frames = []
    for backbone, runs in boards:
        counted = report.board_runs(suite, runs)[2]
        frames.append(counted.assign(label=[report.row_name(label, backbone, suite, len(boards) > 1)
                                            for label in counted["label"]]))
    return pd.concat(frames, ignore_index=True)


def pick_suite(uri: str, name: str | None) -> tuple[catalog.Suite, pd.DataFrame]:
    """``--suite``, or the one suite with finished final runs."""
    if name:
        suite = catalog.load_suite(name)  # an unknown suite fails before the store is touched
        report.check_store(uri)
        runs = report.final_runs(uri, name)
    else:
        report.check_store(uri)
        found = {n: r for n in catalog.suite_names()
                 if not (r := report.final_runs(uri, n)).empty and not r["failed"].all()}
        if len(found) != 1:
            which = f"several suites have final runs ({', '.join(found)})" if found else "no suite has final runs"
            raise UserError(f"{which} in MLflow store {uri}: pass --suite")
        (name, runs), = found.items()
        suite = catalog.load_suite(name)
    if runs.empty or runs["failed"].all():
        raise UserError(f"no finished final runs of suite {name} in MLflow store {uri}")
    return suite, runs


def comparison(suite: catalog.Suite, runs: pd.DataFrame, a: str, b: str) -> tuple[st.Pair, pd.DataFrame]:
    """The pair and the per-task cells (mean, std, seeds of A and B) on the tasks both have."""
    rows = sorted(set(runs["label"]))
    for name in (a, b):
        if name not in rows:
            raise UserError(f"no row {name!r} in suite {suite.name}; rows: {', '.join(rows)}")
    if a == b:
        raise UserError(f"compare two different rows, not {a!r} with itself")
    both = runs[runs["label"].isin([a, b])]
    order = [t for t in suite.tasks if t in set(both["task"])]
    means = st.cell_means(both).reindex(columns=order)
    pair = st.pair(st.Bootstrap(both), means, a, b)
    if not pair.tasks:
        raise UserError(f"{a} and {b} have no task in common in suite {suite.name}")
    cells = both.groupby(["label", "task"])[st.ACC].agg(["mean", "std", "count"])
    return pair, cells


@dataclass
class Boards:
    """The suite's leaderboards' statistics as the report shows them, rows named as here."""
    stats: dict[str, st.SuiteStats]  # per backbone
    where: dict[str, str]  # row name -> its backbone
    failed: set[str]  # rows with a failed seed (§), left out of the leaderboard's tests


def leaderboards(suite: catalog.Suite, all_runs: pd.DataFrame) -> Boards:
    """Each backbone's leaderboard statistics, computed as ``bench report`` computes them (its
    ``leaderboard``, rows with a failed seed left out), rows renamed by ``report.row_name``."""
    boards = report.by_backbone(suite, all_runs)
    several = len(boards) > 1
    out = Boards({}, {}, set())
    for backbone, runs in boards:
        board = report.leaderboard(suite, runs, ("", ""), False, backbone)
        stats = board.stats
        name = {label: report.row_name(label, backbone, suite, several) for label in board.summary.index}
        renamed = st.SuiteStats(stats.tasks, [name[r] for r in stats.rows], [name[r] for r in stats.left_out],
                                {name[r]: v for r, v in stats.average_rank.items()}, {}, stats.friedman,
                                [st.Pair(name[p.a], name[p.b], p.tasks, p.mean_diff, p.ci95, p.p, p.wins, p.ties,
                                         p.losses, p.p_holm, p.w_plus, p.w_minus) for p in stats.pairs],
                                stats.omitted, [name[r] for r in stats.failed])
        out.stats[backbone] = renamed
        out.where.update({n: backbone for n in name.values()})
        out.failed.update(name[r] for r in stats.failed)
    return out


@dataclass
class Correction:
    """The Holm-corrected p of a pair and the family it was corrected over."""
    p_holm: float
    pairs: int  # the family's size
    why: str  # '' when the pair is one of the leaderboard's (its p (Holm) is the report's), else why not


def correct(pair: st.Pair, boards: Boards) -> Correction:
    """``pair``'s p, Holm-corrected over its leaderboard's pairs (the report's p (Holm) of the same
    pair); where the leaderboard does not test it, over the pairs of the leaderboard(s) of A and B
    plus this one."""
    a, b = pair.a, pair.b
    backbones = sorted({boards.where[a], boards.where[b]})
    family = [p for bb in backbones for p in boards.stats[bb].pairs]
    for p in family:
        if {p.a, p.b} == {a, b}:
            return Correction(p.p_holm, len(boards.stats[backbones[0]].pairs), "")
    reasons = []
    if len(backbones) > 1:
        reasons.append("they are on different backbones' leaderboards")
    for x in (a, b):
        if len(backbones) == 1 and x not in boards.stats[backbones[0]].rows:
            reasons.append(f"{x} " + ("has a failed seed" if x in boards.failed else "misses a task"))
    if not reasons:  # both compared on one leaderboard, yet no pair: it tests no pair (fewer than MIN_TASKS tasks)
        reasons.append("the leaderboard tests no pair")
    adjusted = st.holm([p.p for p in family] + [pair.p])
    return Correction(adjusted[-1], len(adjusted), "; ".join(reasons))


def render(suite: catalog.Suite, all_runs: pd.DataFrame, a: str, b: str, planned: bool = False) -> str:
    """The comparison as printed: a line, the per-task table, the numbers, the verdict last.
    ``all_runs``: the suite's final runs (``report.final_runs``); ``planned``: judge by the
    uncorrected p (``--planned``), else by p (Holm) over the leaderboard's pairs."""
    runs = suite_rows(suite, all_runs)
    pair, cells = comparison(suite, runs, a, b)
    fmt = report.fmt

    def cell(label: str, task: str) -> str:
        mean, std, n = cells.loc[(label, task)]
        return fmt(mean, 1) + ("" if n < 2 else f" ± {std:.1f}")

    result = {1: "win", 0: "tie", -1: "loss"}
    table = []
    for t in pair.tasks:
        d = cells.at[(a, t), "mean"] - cells.at[(b, t), "mean"]
        w, ties, _ = st.win_tie_loss([cells.at[(a, t), "mean"]], [cells.at[(b, t), "mean"]])
        table.append([t, cell(a, t), cell(b, t), fmt(d, 1, sign=True), result[1 if w else 0 if ties else -1]])
    seeds = sorted({int(n) for n in cells["count"]})
    n = len(pair.tasks)
    lines = [f"bench compare: {a} vs {b} on suite {suite.name} ({n} tasks both have; seeds per cell: "
             f"{f'{seeds[0]}–{seeds[-1]}' if len(seeds) > 1 else seeds[0]})", "",
             tabulate(table, headers=["Task", a, b, f"{a} − {b}", f"Result for {a}"], tablefmt="github",
                      disable_numparse=True), ""]
    only = {x: sorted(set(cells.loc[x].index) - set(pair.tasks)) for x in (a, b)}
    for x, tasks in only.items():
        if tasks:
            lines.append(f"Not compared: tasks only {x} has: {', '.join(tasks)}.")
    lines += [f"Mean difference ({a} − {b}): {fmt(pair.mean_diff, 2, sign=True)} points, 95% CI "
              f"[{fmt(pair.ci95[0], 2, sign=True)}, {fmt(pair.ci95[1], 2, sign=True)}] (bootstrap over tasks and, "
              f"within each, seeds)",
              f"Wins/ties/losses of {a}: {pair.wins}/{pair.ties}/{pair.losses} (ties: equal at 1 decimal)"]
    boards = leaderboards(suite, all_runs)
    for x in (a, b):
        if x in boards.failed:
            lines.append(f"{report.FAILED_SEED} {x}: a seed's final fit failed and was not redone; its cells are over "
                         f"the seeds that finished, and the leaderboard leaves it out of its ranks and tests.")
    if n < st.MIN_TASKS:  # the verdict says why there is no test
        lines.append(pair.verdict())
        return "\n".join(lines)
    lines += [f"Wilcoxon signed-rank test over {n} tasks (two-sided, zero differences split): p = {st.fmt_p(pair.p)}",
              f"Signed-rank sums: W+ = {pair.w_plus:g} (tasks where {a} is higher), W− = {pair.w_minus:g} (where "
              f"{b} is): " + (f"the test favours {pair.favours}" if pair.favours else "they favour neither row")
              + (", the mean difference the other row" if pair.mean_disagrees else "")]
    if planned:
        lines.append("Judged by p: --planned, one comparison chosen before seeing the results (no multiple-comparison "
                     "correction).")
        lines.append(pair.verdict())
        return "\n".join(lines)
    fix = correct(pair, boards)
    if fix.why:
        family = (f"the {fix.pairs - 1} pairs of the leaderboard(s) of {a} and {b} plus this one, which the report "
                  f"does not test ({fix.why})")
    else:
        family = f"the leaderboard's {fix.pairs} pairs (the p (Holm) the report shows for this pair)"
    lines.append(f"Holm-corrected over {family}: p (Holm) = {st.fmt_p(fix.p_holm)}. Pass --planned if this one "
                 f"comparison was chosen before seeing the results.")
    lines.append(pair.verdict(fix.p_holm, "p (Holm)"))
    return "\n".join(lines)


def main(args) -> int:
    """`bench compare A B [--suite S] [--tracking-uri URI] [--planned]`."""
    uri = args.tracking_uri or tracking.default_tracking_uri()
    suite, all_runs = pick_suite(uri, args.suite)
    print(render(suite, all_runs, args.a, args.b, planned=args.planned))
    return 0
