"""One backbone's leaderboard as markdown: the GitHub pipe table (one row per experiment, a column
per task shown, group and overall means, the 95% CI over seeds and average rank, the paper column
and Δ where compared, params, PPT, throughput, memory; the best value of each column bold among
the rows whose mean is ranked) and the notes under it that say what each column is, what is
marked (``STALE`` †, ``PARTIAL`` ‡, ``FAILED_SEED`` §) and what was read but not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import catalog, tracking
from ..errors import UserError
from . import stats as st
from .cells import board_runs, cell_stats, failed_seeds, shown_tasks, summarize, task_groups
from .format import ci_text, fmt, markdown_table
from .paper import PAPER_PROTOCOL, load_reference, not_released, paper_and_delta, reference_rows

STALE = "†"
PARTIAL = "‡"
FAILED_SEED = "§"


def column(values: pd.Series, decimals: int, best: str | None, std: pd.Series | None = None,
           marks: dict[str, pd.Series] | None = None, sign: bool = False,
           eligible: pd.Series | None = None) -> pd.Series:
    """Formatted cells of one numeric column: best shown value(s) bold (among ``eligible`` rows:
    a mean over fewer tasks is no contest), ' ± std', then each symbol of ``marks`` where its
    series is True (' †' stale, ' §' failed seeds)."""
    shown = values.map(lambda v: fmt(v, decimals, sign))
    cells = shown.copy()
    if std is not None:
        cells = cells + std.reindex(values.index).map(lambda s: "" if pd.isna(s) else f" ± {fmt(s, decimals)}")
    if best:
        nums = pd.to_numeric(shown.where(shown != "-"), errors="coerce")
        if eligible is not None:
            nums = nums.where(eligible.reindex(values.index, fill_value=False).astype(bool))
        target = nums.max() if best == "max" else nums.min()
        cells = cells.where(nums != target, "**" + cells + "**")
    for symbol, where in (marks or {}).items():
        where = where.reindex(values.index, fill_value=False).fillna(False).astype(bool)
        cells = cells.where(~where, cells + f" {symbol}")
    return cells


def seeds_column(cells: pd.DataFrame, labels: pd.Index) -> pd.Series:
    """Seeds per cell of each row: '2', or '1–2' when the row's cells differ."""
    n = cells["n"].groupby("label").agg(["min", "max"]).reindex(labels)
    return pd.Series([f"{lo}" if lo == hi else f"{lo}–{hi}" for lo, hi in n.itertuples(index=False)],
                     index=labels)


def missing_notes(cells: pd.DataFrame, tasks: list[str], groups: dict[str, list[str]]) -> dict[str, str]:
    """Per row with missing tasks, the note that says which and over how many its means are."""
    notes = {}
    for label, have in cells.reset_index().groupby("label")["task"]:
        have = set(have)
        present = [t for t in tasks if t in have]
        missing = [t for t in tasks if t not in have]
        if not missing:
            continue
        which = (f"finished final runs only for {', '.join(present)}" if len(missing) > len(present)
                 else f"no finished final run for {', '.join(missing)}")
        text = f"{PARTIAL} {label}: {which}; its means are over {len(present)} of {len(tasks)} tasks"
        gaps = [g for g, names in groups.items() if not set(names) & have]
        if gaps:
            text += f" and {len(groups) - len(gaps)} of {len(groups)} groups (none in {', '.join(gaps)})"
        notes[label] = text + "."
    return notes


def measured_on(summary: pd.DataFrame) -> str:
    """The one device class ("CPU", a GPU's name) every row's throughput and memory were measured
    on, for the columns' headers; "" when the rows differ (``measured_on_note`` says which is which)
    or none was recorded."""
    classes = set(summary.get("measured_on", pd.Series(dtype=object)))
    return classes.pop() if len(classes) == 1 and "," not in next(iter(classes)) else ""


def measured_on_note(summary: pd.DataFrame) -> str | None:
    """Where the rows' device classes differ: which rows were measured on which, in one note."""
    if measured_on(summary) or not summary.get("measured_on", pd.Series(dtype=object)).astype(bool).any():
        return None
    by_class: dict[str, list[str]] = {}
    for label, on in summary["measured_on"].items():
        by_class.setdefault(on or "not recorded", []).append(str(label))
    return ("Train img/s and Peak mem (MB) come from different devices, not comparable across them: "
            + "; ".join(f"{on}: {', '.join(labels)}" for on, labels in sorted(by_class.items())) + ".")


def build_table(cells: pd.DataFrame, tasks: list[str], groups: dict[str, list[str]], summary: pd.DataFrame,
                partial: dict[str, str], paper: pd.Series | None, delta: pd.Series | None,
                suite_stats: st.SuiteStats | None = None) -> str:
    """The leaderboard as a GitHub pipe table, one row per method (variant), sorted by label.
    ``suite_stats``: the 95% CI over seeds of each mean and the average ranks (``stats``;
    rows with a failed seed, ``summary["all_seeds"]`` False, are left out of the ranks)."""
    labels = summary.index
    mean, std, stale, failed = (cells[field].unstack("task").reindex(index=labels, columns=tasks)
                                for field in ("mean", "std", "stale", "failed"))
    cols = {"Method": pd.Series([f"{l} {PARTIAL}" if l in partial else l for l in labels], index=labels),
            "Seeds": seeds_column(cells, labels)}
    complete = summary["ranked"]
    by_group = groups or {"": tasks}
    for group, names in by_group.items():
        for t in names:
            cols[t] = column(mean[t], 1, "max", std[t], {STALE: stale[t], FAILED_SEED: failed[t] > 0})
        if group:
            whole = mean[names].notna().all(axis=1) & (failed[names].fillna(0) == 0).all(axis=1)
            cols[f"{group} mean"] = column(summary[group], 1, "max", eligible=whole)
    cols[f"Mean ({len(tasks)} tasks)"] = column(summary["mean_tasks"], 1, "max", eligible=complete)
    if suite_stats is not None:
        ci = pd.Series(suite_stats.mean_ci95, dtype=object).reindex(labels)
        cols["95% CI (seeds)"] = ci.map(lambda c: "-" if not isinstance(c, tuple) or pd.isna(c[0])
                                        else ci_text(c, 1))
        cols["Avg rank"] = column(pd.Series(suite_stats.average_rank, dtype=float).reindex(labels), 2, "min")
    if groups:
        cols[f"Mean of {len(groups)} group means"] = column(summary["mean_groups"], 1, "max", eligible=complete)
    if paper is not None:
        cols["paper"] = column(paper.reindex(labels), 1, None)
        cols["Δ"] = column(delta.reindex(labels), 1, "max", sign=True, eligible=complete)
    cols["Params (M, no head)"] = column(summary[tracking.PARAMS_BACKBONE] / 1e6, 3, "min")
    cols["Params (M, with heads)"] = column(summary[tracking.PARAMS_TOTAL] / 1e6, 3, "min")
    cols["PPT"] = column(summary["ppt"], 3, "max", eligible=complete)
    on = measured_on(summary)  # the device class of the throughput and memory, where every row shares one
    cols[f"Train img/s ({on})" if on else "Train img/s"] = column(summary[tracking.TRAIN_IMG_PER_S], 1, "max",
                                                                  eligible=summary[tracking.PARAMS_BACKBONE] > 0)
    cols[f"Peak mem (MB, {on})" if on else "Peak mem (MB)"] = column(summary[tracking.PEAK_MEM_MB], 0, "min")
    table = pd.DataFrame(cols)
    return markdown_table(table.values.tolist(), list(table.columns))


def notes(suite: catalog.Suite, runs: pd.DataFrame, tasks: list[str], groups: dict[str, list[str]],
          commit: tuple[str, str], ref_rows: pd.DataFrame | None, reference: pd.DataFrame | None) -> list[str]:
    """The notes under the table that say what each column is and how it was computed."""
    out = ["Cells: top-1 test accuracy (%) at the last epoch, mean ± sample std (ddof=1) over seeds; "
           "a single seed shows its value alone. Seeds: seeds per cell (a range when the row's cells "
           "differ). A (method, task, seed) fitted more than once counts once: its latest run."]
    means = f"Mean ({len(tasks)} tasks): mean over the task columns"
    if groups:
        means += (f"; {', '.join(g + ' mean' for g in groups)}: mean over the group's task columns; "
                  f"Mean of {len(groups)} group means: mean of those {len(groups)}")
    out.append(means + ". A method's means are over the tasks it has runs for.")
    hidden = [t for t in suite.tasks if t not in tasks]
    if hidden:
        out.append(f"Tasks of {suite.title} without any finished final run, so neither shown nor in any "
                   f"mean: {', '.join(hidden)} ({len(hidden)} of {len(suite.tasks)}).")
    if reference is not None:
        used = ", ".join(f"{label} → {row}" for label, row in ref_rows["row"].items() if row)
        none = [label + (f" (only {method}_star, another protocol)" if f"{method}_star" in reference.index else "")
                for label, method, row in ref_rows.itertuples() if not row]
        text = (f"paper: the mean over all {len(suite.tasks)} tasks reported for the reference row "
                f"(table below): {used or 'none'}")
        if none:
            text += f"; '-' where the paper has no row of the method run this way: {', '.join(none)}"
        out.append(text + ". Δ: ours minus paper (Mean minus paper when the method has runs for "
                   "every task of the suite).")
        if suite.name in PAPER_PROTOCOL:
            out.append("Protocol of the paper column: " + PAPER_PROTOCOL[suite.name])
    ranked = "accuracy, Δ, PPT" if reference is not None else "accuracy, PPT"
    out += [
        "Params (M, no head): trainable parameters without the classifier head (params_backbone); "
        "Params (M, with heads): trainable parameters with the head, averaged over tasks (params_total).",
        f"PPT (V-PETL Bench performance-parameter trade-off) = Mean / 100 × exp(−log10(P / 10^7 + 1)), "
        f"Mean = Mean ({len(tasks)} tasks) in %, P = trainable parameters with heads.",
        "Train img/s: training images per second of training wall time (a linear probe's includes its "
        "one pass of feature extraction per split, then trains the head on cached features: not "
        "comparable with backpropagating methods, so never ranked); Peak mem (MB): peak memory (GPU "
        "only); both averaged over the method's runs.",
        f"Bold: the best value of each column of ours (highest {ranked} and throughput; lowest params "
        f"and memory); a mean over fewer tasks (‡) or with failed seeds ({FAILED_SEED}) is not ranked.",
    ]
    stale = sorted(set(runs.loc[runs["commit"] != commit[0], "commit"]))
    if stale:
        out.append(f"{STALE} stale: the cell has runs from another commit ({', '.join(stale)}) than the "
                   f"current commit {commit[0]} ({commit[1]}); rerun them to count them as current.")
    labels = sorted(set(runs["label"]) - set(runs["method"]))
    if labels:
        out.append("Rows named 'method (...)' are experiments other than the suite's main one (that of most "
                   "final runs): what differs is in the brackets (fixed hyperparameters, protocol, weights, "
                   "data); their runs never join another row's cells.")
    for name in sorted(set(runs["recipe"]) - {""}):
        out.append(recipe_note(name))
    if (runs["weights_sha256"] == tracking.RANDOM_INIT).any():
        out.append("(random init): a randomly initialised backbone (`--pretrained none`), not comparable with "
                   "a pretrained one or with the paper column.")
    return out


def recipe_note(name: str) -> str:
    """What a recipe row is and what still differs from its source (the recipe file's notes)."""
    from ..recipes import load_recipe

    try:
        r = load_recipe(name)
    except (UserError, ValueError):  # a recipe this version no longer ships (or ships changed): say so
        return f"(recipe {name}): settings of a recipe this version of bench does not ship."
    return (f"(recipe {r.name}): no tuning; every fit trained with the per-task settings of {r.title}, "
            f"transcribed from {r.repository} at {r.commit[:7]} (bench/catalog_data/recipes/{r.name}.toml). "
            f"Still different from the source: {'; '.join(r.notes)}.")


@dataclass
class Board:
    """One backbone's leaderboard: the table and its notes as markdown lines, the per-row
    summary, the tasks shown, the number of runs counted, and its statistics."""
    backbone: str
    lines: list[str]
    summary: pd.DataFrame
    tasks: list[str]
    n_runs: int
    stats: st.SuiteStats


def leaderboard(suite: catalog.Suite, all_runs: pd.DataFrame, commit: tuple[str, str],
                compare: bool, backbone: str = "") -> Board:
    """One backbone's leaderboard. ``compare``: whether the published rows were measured on this
    backbone (the paper column and Δ)."""
    labelled, known, runs = board_runs(suite, all_runs)
    finished = labelled[~labelled["failed"]]
    lost = failed_seeds(labelled[labelled["failed"] & labelled["task"].isin(list(suite.tasks))], runs)
    cells = cell_stats(runs, commit[0], lost)
    tasks = shown_tasks(suite, cells)
    groups = task_groups(suite, tasks)
    summary = summarize(runs, cells, tasks, groups)
    suite_stats = st.analyse(runs, tasks, failed=summary.index[~summary["all_seeds"].astype(bool)])
    partial = missing_notes(cells, tasks, groups)
    reference = load_reference(suite.name) if compare else None
    paper = delta = ref_rows = None
    delta_notes: list[str] = []
    if reference is not None:
        released = runs["weights_sha256"].isin(suite.paper_weights_sha256)
        ref_rows = reference_rows(runs[released], reference)
        paper, delta, delta_notes = paper_and_delta(summary, cells, ref_rows, reference, list(suite.tasks))
        if not released.all():
            delta_notes.append(not_released(suite, sorted(set(runs.loc[~released, "label"]))))
    lines = [build_table(cells, tasks, groups, summary, partial, paper, delta, suite_stats), ""]
    lines += [f"- {n}" for n in notes(suite, runs, tasks, groups, commit, ref_rows, reference)]
    lines += [f"- {n}" for n in stats_notes(tasks)]
    lines += [f"- {n}" for n in list(partial.values()) + failed_notes(lost) + delta_notes]
    lines += [f"- {n}" for n in [measured_on_note(summary)] if n]
    lines += _ignored_notes(finished, known, runs)
    return Board(backbone, lines, summary, tasks, len(runs), suite_stats)


def stats_notes(tasks: list[str]) -> list[str]:
    """What the 95% CI (seeds) and Avg rank columns are."""
    return [f"95% CI (seeds): an interval over seeds for Mean ({len(tasks)} tasks): per seed, the row's mean over "
            f"its tasks with that seed; the 95% t-interval of their mean (n seeds, n − 1 degrees of freedom). It "
            f"says how far Mean would move if the row were rerun with other seeds, the tasks fixed; it is not "
            f"about other tasks (the statistics section is). '-' with fewer than {st.MIN_SEEDS_CI} seeds per cell "
            f"(a 2-seed percentile bootstrap is about 30% too narrow, a 2-seed t-interval has one degree of "
            f"freedom, and one seed has no spread to measure) or where the row's cells do "
            f"not all have the same seeds (a failed seed, {FAILED_SEED}).",
            f"Avg rank: the row's rank on each task (1 = best, ties averaged) among the rows that have every "
            f"task and every seed, averaged over the tasks; '-' for a row that misses a task ({PARTIAL}) or has a "
            f"failed seed ({FAILED_SEED}): those are left out of the ranks and the tests (see the statistics "
            f"section)."]


def failed_notes(lost: pd.DataFrame) -> list[str]:
    """Per cell with failed seeds: which seeds, and why."""
    out = []
    for (label, task), runs in lost.groupby(["label", "task"], sort=True):
        seeds = ", ".join(f"seed {r.seed} ({r.failure or 'no reason recorded'})"
                          for r in runs.sort_values("seed").itertuples())
        out.append(f"{FAILED_SEED} {label}/{task}: {len(runs)} seed(s) failed and not redone: {seeds}; "
                   f"the cell is over the seeds that finished.")
    return out


def _ignored_notes(labelled: pd.DataFrame, known: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """Say what was read but not counted, so nothing disappears silently."""
    out = []
    unknown = sorted(set(labelled["task"]) - set(known["task"]))
    if unknown:
        out.append(f"- Not counted: {len(labelled) - len(known)} final run(s) of tasks not in the catalog "
                   f"({', '.join(unknown)}).")
    if len(known) > len(runs):
        out.append(f"- Not counted: {len(known) - len(runs)} final run(s) superseded by a later run of the "
                   f"same experiment, method, task and seed.")
    return out
