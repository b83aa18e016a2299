"""`bench compare A B`: a paired comparison of two leaderboard rows on the tasks both have, for
when the question is one pair, not the whole table: the mean difference with its 95% CI, per-task
wins, ties and losses, the Wilcoxon signed-rank p, and a one-line verdict.

Rows are named as in the leaderboard (``lora``, ``vpt (mode=shallow)``; with several backbones,
rows off the suite's carry ``[backbone]``) and their cells are the leaderboard's: the same runs,
the same latest-run-per-seed rule (``bench.report.board_runs``), the same numbers as
``bench.stats`` (one pre-planned comparison, so its p is not Holm-corrected; the report's is).
"""
from __future__ import annotations

import pandas as pd
from tabulate import tabulate

from . import catalog, report, tracking
from . import stats as st
from .errors import UserError


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


def render(suite: catalog.Suite, runs: pd.DataFrame, a: str, b: str) -> str:
    """The comparison as printed: a line, the per-task table, the numbers, the verdict last."""
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
    if n >= st.MIN_TASKS:  # with fewer, the verdict says why there is no test
        lines.append(f"Wilcoxon signed-rank test over {n} tasks (two-sided; one comparison, no multiple-comparison "
                     f"correction): p = {st.fmt_p(pair.p)}")
    lines.append(pair.verdict())
    return "\n".join(lines)


def main(args) -> int:
    """`bench compare A B [--suite S] [--tracking-uri URI]`."""
    uri = args.tracking_uri or tracking.default_tracking_uri()
    suite, all_runs = pick_suite(uri, args.suite)
    print(render(suite, suite_rows(suite, all_runs), args.a, args.b))
    return 0
