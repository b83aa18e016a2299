"""`bench report`: leaderboards rendered from what MLflow holds, never written by hand.

For each suite it reads the FINISHED runs tagged ``phase=final`` of the experiment
``peft-bench/<suite>`` (schema: ``bench/tracking.py``), aggregates them with pandas and writes
``<out>/<suite>.md`` (GitHub pipe tables via tabulate): one leaderboard per backbone the suite's
runs used, each with its statistics section (``bench.stats``, ``bench.stats_report``: 95% CI of
each mean, average ranks, Friedman, Wilcoxon-Holm pairs, ``<suite>_cd.png``); then the trade-off
plots (``bench.tradeoff``: ``<suite>_params.png``, ``_throughput.png``, ``_memory.png`` with the
Pareto front) and the tuning analysis of the Optuna studies (``bench.tuning_analysis``,
``<suite>_tuning.png``; the storage of ``--storage``, else the one beside a SQLite MLflow store).
``<suite>_stats.json`` holds the statistics machine-readably: those of the first leaderboard
(the suite's own backbone when it has runs) at the top level, other backbones' under
``other_backbones``; rows are named as in their table (without the ‡ mark).
Everything is a function of the stores' content alone (no timestamps, stable sorting, fixed float
formats, seeded bootstrap, PNGs without metadata), so the same stores render byte-identical files.

Rules the table follows, beyond the schema:
- One leaderboard per backbone (the ``backbone`` param of each run; a run that records none, which
  ``bench run`` never writes, counts as on the suite's backbone): results of two backbones never
  share a row, a mean or a bold mark. The paper column and Δ appear only in the leaderboard of the
  suite's own backbone (``backbone`` in its catalog file), the one the published rows were
  measured on: a ViT-L or DINOv2 row is never compared with ViT-B/16 numbers.
- One row per experiment: a cell only ever aggregates runs of one identity (protocol: epochs,
  warm-up, batch, trials; backbone; weights hash; data hash; hyperparameters fixed with --hparam).
  The suite's main identity is the one most final runs share; a row of another identity is
  labelled with what differs, e.g. ``lora (rank=4)``, ``lora (epochs=1)``; a randomly initialised
  backbone always shows as ``(random init)``.
- Columns are the catalog's tasks (catalog order) that at least one row has a final run for;
  the suite's other tasks are named in a note and are in no mean.
- A (row, task, seed) fitted more than once (a ``--force`` rerun) counts once: its most
  recently started run.
- A task a row has no run for shows "-", its means are over the tasks it has, and a note
  (marked "‡") names the missing tasks. A seed whose final fit FAILED (e.g. diverged) and was
  never redone marks its cell "§" and a note names it: a mean over survivors is never shown as
  if complete.
- The current commit is that of the checkout rendering the report; a cell with a run from any
  other commit is marked "†" (stale: rerun it with the current code).
- The variant (``mode`` param of vpt/adapter) picks the paper's reference row.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

import methods

from . import catalog, identity, stats_report, tracking, tradeoff, tuning_analysis
from . import stats as st
from .errors import UserError, first_line
from .identity import Experiment
from .stats import fmt

REFERENCE_DIR = catalog.CATALOG_DIR / "reference"
STALE = "†"
PARTIAL = "‡"
FAILED_SEED = "§"
METRICS = (tracking.TEST_ACC, tracking.PARAMS_BACKBONE, tracking.PARAMS_TOTAL,
           tracking.TRAIN_IMG_PER_S, tracking.PEAK_MEM_MB)
VARIANT_PARAM = "mode"
# methods whose `mode` param changes what is compared (vpt deep/shallow, adapter parallel/sequential,
# convpass and repadapter block/attn), and their default modes, read from the registry
VARIANT_METHODS = tuple(m for m in methods.names() if VARIANT_PARAM in methods.get(m).defaults)
DEFAULT_MODE = {m: methods.get(m).defaults[VARIANT_PARAM] for m in VARIANT_METHODS}
# (method, variant) -> reference row; ssf has none: ssf_star used SSF-style augmentation.
PAPER_ROW = {
    ("full", ""): "full",
    ("linear", ""): "linear",
    ("lora", ""): "lora",
    ("rlrr", ""): "rlrr",
    ("vpt", "deep"): "vpt_deep",
    ("vpt", "shallow"): "vpt_shallow",
    ("adapter", "sequential"): "adapter_noah",  # NOAH's adapter: bottleneck 8, after the MLP, 0.16M
    ("adapter", "parallel"): "adaptformer",
    ("bitfit", ""): "bias",
    ("fact_tt", ""): "fact_tt",
    ("fact_tk", ""): "fact_tk",
    ("convpass", "block"): "convpass",  # the attention-only modes have no published row
    ("repadapter", "block"): "repadapter",
}
# How the published rows were obtained, where it differs from this harness's protocol (tuned on
# the validation split, last-epoch test accuracy, several seeds): see datasets/reference/README.md.
PAPER_PROTOCOL = {
    "vtab1k": "the published rows follow each paper's own protocol, not ours: the official RLRR code "
              "(and most repositories it copies) evaluates on the test split after every epoch and reports "
              "the best epoch, trains 110 epochs (100 + 10 cool-down), sets drop-path per task, "
              "zero-initialises the head and flips images horizontally on 10 tasks, with one seed and "
              "per-task hyperparameters; ours report the last epoch of hyperparameters tuned on val200, "
              "mean over seeds. A negative Δ therefore mixes implementation and protocol differences "
              "(best-of-epochs on test is optimistic by construction).",
    "fgvc": "the published rows follow each paper's own protocol, not ours: best epoch on the test split, "
            "per-task hyperparameters chosen on the validation split, one seed; ours report the last "
            "epoch, mean over seeds. Δ mixes implementation and protocol differences.",
}
PPT_SCALE = 1e7  # V-PETL Bench's C


# --------------------------------------------------------------------------- reading MLflow

def check_store(uri: str) -> None:
    """A report only reads: a SQLite file that is not there is an error, never a new empty store,
    and a damaged one is an error too (``tracking.check_sqlite``), never half read. A tracking
    server that is down fails in seconds (``tracking.fail_fast``, as for `bench run`)."""
    tracking.fail_fast()
    path = tracking.sqlite_path(uri)
    if path is not None and not path.is_file():
        raise UserError(f"no MLflow store at {path} (run `bench run` first, or pass --tracking-uri)")
    tracking.check_sqlite(path, "MLflow store")


@contextmanager
def _store(uri: str):
    """mlflow.search_runs reads the global tracking URI: point it at ``uri`` for the block only,
    and turn whatever a bad or unreachable store raises into one UserError line."""
    import mlflow

    before, env_before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # this also sets $MLFLOW_TRACKING_URI: both are restored below
    try:
        yield mlflow
    except UserError:
        raise
    except Exception as exc:  # mlflow, sqlalchemy and requests each raise their own types
        raise UserError(f"cannot read MLflow store {uri}: {first_line(exc)}") from None
    finally:
        mlflow.set_tracking_uri(before)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def final_runs(uri: str, suite: str) -> pd.DataFrame:
    """The suite's FINISHED (and FAILED, for the notes) phase=final runs as a tidy frame."""
    with _store(uri) as mlflow:
        exp = mlflow.MlflowClient(uri).get_experiment_by_name(tracking.experiment_name(suite))
        if exp is None or exp.lifecycle_stage != "active":
            return _tidy(pd.DataFrame())
        raw = mlflow.search_runs(
            experiment_ids=[exp.experiment_id],
            filter_string=f"tags.phase = '{tracking.PHASE_FINAL}'",
            output_format="pandas",
        )
    return _tidy(raw)


def _tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """Plain column names, strings for tags and params, floats for metrics, the run's experiment
    (``identity.Experiment``, read from its ``experiment`` tag) and the method variant. Kept:
    FINISHED runs with a test accuracy (there is nothing to rank otherwise) and FAILED runs
    (``failed`` True); runs whose tag is not an identity of this version are left out and counted
    in ``attrs["unidentified"]``."""
    names = {"run_id": "run_id", "start_time": "start", "status": "status", "tags.method": "method",
             "tags.task": "task", "tags.seed": "seed", "tags.git_commit": "commit",
             f"tags.{tracking.EXPERIMENT_TAG}": "identity", "tags.failure_reason": "failure",
             f"params.{VARIANT_PARAM}": "mode", "params.data_sha256": "data",
             **{f"metrics.{m}": m for m in METRICS}}
    df = raw.reindex(columns=list(names)).rename(columns=names)
    for col in ("run_id", "status", "method", "task", "seed", "commit", "identity", "failure", "mode", "data"):
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    df["commit"] = df["commit"].replace("", "unknown")
    for col in METRICS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["experiment"] = [_experiment(text) for text in df["identity"]]
    df["backbone"] = [e.backbone if e else "" for e in df["experiment"]]
    df["recipe"] = [e.recipe if e else "" for e in df["experiment"]]
    df["weights_sha256"] = [e.weights_sha256 if e else "" for e in df["experiment"]]
    df["variant"] = df["mode"].where(df["method"].isin(VARIANT_METHODS), "")
    df["failed"] = df["status"] == "FAILED"
    keep = (df["status"] == "FINISHED") & df[tracking.TEST_ACC].notna() | df["failed"]
    known = df["experiment"].notna()
    out = df[keep & known].drop(columns=["mode", "identity", "status"]).reset_index(drop=True)
    out.attrs["unidentified"] = int((keep & ~known).sum())
    return out


def _experiment(text: str) -> Experiment | None:
    try:
        return Experiment.from_json(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------- aggregation

def label_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Row labels, one per experiment identity (``identity.row_labels``: the method, then what sets
    its experiment apart from the suite's main one), and per task a data hash other than the one
    most runs of the task used. E.g. 'lora', 'lora (rank=4)', 'lora (epochs=1)'. ``runs`` are those
    of one backbone (``by_backbone``), so the backbone itself never needs a label."""
    done = runs[~runs["failed"]]
    basis = (done if not done.empty else runs).sort_values(["start", "run_id"])
    names = identity.row_labels(basis["experiment"], also=runs["experiment"])
    main_data = {t: identity.most_common(list(g["data"])) for t, g in basis.groupby("task")}
    labels = []
    for e, task, data in zip(runs["experiment"], runs["task"], runs["data"]):
        label = names[e]
        if data != main_data.get(task, data):
            label = label[:-1] + f", data={data[:8] or '?'})" if label.endswith(")") else f"{label} (data={data[:8] or '?'})"
        labels.append(label)
    return runs.assign(label=labels)


def checkout_commit(runs: pd.DataFrame) -> tuple[str, str]:
    """(commit, where from): the checkout rendering the report, so that runs of older code show as
    stale even when the whole suite is; without a git checkout (an installed wheel), the commit
    of the most recently started final run."""
    commit = tracking.git_commit()
    if commit != "unknown":
        return commit, "the checkout rendering this report"
    newest = runs.sort_values(["start", "run_id"]).iloc[-1]["commit"]
    return str(newest), "that of the most recently started final run (no git checkout here)"


def latest_per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per (row, task, seed): the most recently started, so a rerun replaces, not adds."""
    ordered = runs.sort_values(["label", "task", "seed", "start", "run_id"])
    return ordered.drop_duplicates(["label", "task", "seed"], keep="last").reset_index(drop=True)


def failed_seeds(failed: pd.DataFrame, finished: pd.DataFrame) -> pd.DataFrame:
    """FAILED final runs of a (row, task, seed) that has no finished run: seeds missing from a
    cell's mean. One per (row, task, seed), the latest, with its failure reason."""
    done = set(zip(finished["label"], finished["task"], finished["seed"]))
    lost = failed[np.array([k not in done for k in zip(failed["label"], failed["task"], failed["seed"])],
                           dtype=bool)]
    return latest_per_seed(lost) if not lost.empty else lost


def cell_stats(runs: pd.DataFrame, commit: str, lost: pd.DataFrame) -> pd.DataFrame:
    """Per (row, task): mean and sample std (ddof=1) of test_acc over seeds, seed count, stale,
    and the number of seeds whose final fit failed (``lost``)."""
    runs = runs.assign(stale=runs["commit"] != commit)
    cells = runs.groupby(["label", "task"], sort=True).agg(
        mean=(tracking.TEST_ACC, "mean"), std=(tracking.TEST_ACC, "std"),
        n=(tracking.TEST_ACC, "count"), stale=("stale", "any"))
    failed = lost.groupby(["label", "task"]).size() if not lost.empty else pd.Series(dtype=int)
    return cells.assign(failed=failed.reindex(cells.index, fill_value=0).astype(int))


def shown_tasks(suite: catalog.Suite, cells: pd.DataFrame) -> list[str]:
    """Catalog tasks, in catalog order, that at least one row has a final run for."""
    have = set(cells.index.get_level_values("task"))
    return [name for name in suite.tasks if name in have]


def task_groups(suite: catalog.Suite, tasks: list[str]) -> dict[str, list[str]]:
    """Shown tasks by group in the suite's group order; empty for a suite without groups."""
    groups = {g: [t for t in tasks if suite.tasks[t].group == g] for g in suite.groups}
    return {g: names for g, names in groups.items() if names}


def ppt(mean_acc: pd.Series, params: pd.Series) -> pd.Series:
    """V-PETL Bench's performance-parameter trade-off: acc/100 * exp(-log10(P / 1e7 + 1))."""
    return mean_acc / 100 * np.exp(-np.log10(params / PPT_SCALE + 1))


def summarize(runs: pd.DataFrame, cells: pd.DataFrame, tasks: list[str],
              groups: dict[str, list[str]]) -> pd.DataFrame:
    """Per row: group means, both overall means, whether it has every task, params, PPT,
    throughput and memory."""
    acc = cells["mean"].unstack("task").reindex(columns=tasks)
    out = pd.DataFrame({"complete": acc.notna().all(axis=1)})
    for group, names in groups.items():
        out[group] = acc[names].mean(axis=1)
    out["mean_tasks"] = acc.mean(axis=1)
    out["mean_groups"] = out[list(groups)].mean(axis=1) if groups else float("nan")
    params = runs.groupby(["label", "task"])[[tracking.PARAMS_BACKBONE, tracking.PARAMS_TOTAL]].mean()
    out = out.join(params.groupby("label").mean())
    out = out.join(runs.groupby("label")[[tracking.TRAIN_IMG_PER_S, tracking.PEAK_MEM_MB]].mean())
    out["ppt"] = ppt(out["mean_tasks"], out[tracking.PARAMS_TOTAL])
    out["all_seeds"] = cells["failed"].groupby("label").sum().reindex(out.index, fill_value=0) == 0
    out["ranked"] = out["complete"] & out["all_seeds"]  # a mean over fewer tasks or seeds is no contest
    return out.sort_index()


# --------------------------------------------------------------------------- the paper

def load_reference(suite: str) -> pd.DataFrame | None:
    """``bench/catalog_data/reference/<suite>_reported.csv`` (package data) as printed (strings,
    '' = not transcribed); None when the suite has no reference numbers."""
    path = REFERENCE_DIR / f"{suite}_reported.csv"
    if not path.is_file():
        return None
    with path.open("r", encoding="utf-8") as f:
        return pd.read_csv(f, dtype=str, keep_default_na=False).set_index("method")


def reference_rows(runs: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per row label: its method and the reference row it is compared with ('' when none)."""
    keys = runs.drop_duplicates("label").set_index("label")[["method", "variant"]].sort_index()
    rows = pd.Series([PAPER_ROW.get((m, v), "") for m, v in keys.itertuples(index=False)], index=keys.index)
    return keys[["method"]].assign(row=rows.where(rows.isin(reference.index), ""))


def paper_and_delta(summary: pd.DataFrame, cells: pd.DataFrame, ref_rows: pd.DataFrame,
                    reference: pd.DataFrame, all_tasks: list[str]) -> tuple[pd.Series, pd.Series, list[str]]:
    """The reported mean per row and Δ = ours minus paper, like with like: the full mean when the
    row covers every task of the suite, else the mean of per-task differences where the paper
    gives them, else no Δ. Also the notes that say which rows got the per-task form or none."""
    numbers = reference.drop(columns=["source"]).apply(pd.to_numeric, errors="coerce")
    acc = cells["mean"].unstack("task")
    paper, delta, notes = {}, {}, []
    for label, row in ref_rows["row"].items():
        if not row:
            continue
        paper[label] = numbers.at[row, "mean"]
        ours = acc.loc[label].dropna()
        if set(ours.index) >= set(all_tasks):
            delta[label] = summary.at[label, "mean_tasks"] - paper[label]
            continue
        theirs = numbers.loc[row, list(ours.index)]
        if theirs.notna().all():
            delta[label] = (ours - theirs).mean()
            notes.append(f"Δ of {label}: mean over its {len(ours)} tasks of ours minus the paper's "
                         f"per-task value, since it has runs for {len(ours)} of {len(all_tasks)} tasks.")
        elif pd.notna(paper[label]):
            notes.append(f"Δ of {label}: '-', since it has runs for {len(ours)} of {len(all_tasks)} tasks "
                         f"and the paper gives no per-task values for all of them.")
    return pd.Series(paper, dtype=float), pd.Series(delta, dtype=float), notes


def paper_table(reference: pd.DataFrame, tasks: list[str]) -> str:
    """The reference rows as published, '_star' rows labelled as the other protocol they are."""
    rows = []
    for name, rec in reference.iterrows():
        protocol = "other: SSF-style augmentation" if name.endswith("_star") else "the paper's (see notes)"
        rows.append([name, protocol, rec["params_m"] or "-"] + [rec[t] or "-" for t in tasks]
                    + [rec["mean"] or "-"])
    headers = ["Reference row", "Protocol", "Params (M)"] + tasks + ["Mean"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


# --------------------------------------------------------------------------- formatting

def column(values: pd.Series, decimals: int, best: str | None, std: pd.Series | None = None,
           marks: dict[str, pd.Series] | None = None, sign: bool = False,
           eligible: pd.Series | None = None) -> pd.Series:
    """Formatted cells of one numeric column: best shown value(s) bold (among ``eligible`` rows:
    a mean over fewer tasks is no contest), ' ± std', then each symbol of ``marks`` where its
    series is True (' †' stale, ' §' failed seeds)."""
    shown = values.map(lambda v: fmt(v, decimals, sign))
    cells = shown.copy()
    if std is not None:
        cells = cells + std.reindex(values.index).map(lambda s: "" if pd.isna(s) else f" ± {s:.{decimals}f}")
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


# --------------------------------------------------------------------------- the report

def build_table(cells: pd.DataFrame, tasks: list[str], groups: dict[str, list[str]], summary: pd.DataFrame,
                partial: dict[str, str], paper: pd.Series | None, delta: pd.Series | None,
                suite_stats: st.SuiteStats | None = None) -> str:
    """The leaderboard as a GitHub pipe table, one row per method (variant), sorted by label.
    ``suite_stats``: the 95% CI over seeds of each mean and the average ranks (``bench.stats``;
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
                                        else f"[{fmt(c[0], 1)}, {fmt(c[1], 1)}]")
        cols["Avg rank"] = column(pd.Series(suite_stats.average_rank, dtype=float).reindex(labels), 2, "min")
    if groups:
        cols[f"Mean of {len(groups)} group means"] = column(summary["mean_groups"], 1, "max", eligible=complete)
    if paper is not None:
        cols["paper"] = column(paper.reindex(labels), 1, None)
        cols["Δ"] = column(delta.reindex(labels), 1, "max", sign=True, eligible=complete)
    cols["Params (M, no head)"] = column(summary[tracking.PARAMS_BACKBONE] / 1e6, 3, "min")
    cols["Params (M, with heads)"] = column(summary[tracking.PARAMS_TOTAL] / 1e6, 3, "min")
    cols["PPT"] = column(summary["ppt"], 3, "max", eligible=complete)
    cols["Train img/s"] = column(summary[tracking.TRAIN_IMG_PER_S], 1, "max",
                                 eligible=summary[tracking.PARAMS_BACKBONE] > 0)
    cols["Peak mem (MB)"] = column(summary[tracking.PEAK_MEM_MB], 0, "min")
    table = pd.DataFrame(cols)
    return tabulate(table.values.tolist(), headers=list(table.columns), tablefmt="github",
                    disable_numparse=True)


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
    from .recipes import load_recipe

    try:
        r = load_recipe(name)
    except (UserError, ValueError):  # a recipe this version no longer ships (or ships changed): say so
        return f"(recipe {name}): settings of a recipe this version of bench does not ship."
    return (f"(recipe {r.name}): no tuning; every fit trained with the per-task settings of {r.title}, "
            f"transcribed from {r.repository} at {r.commit[:7]} (bench/catalog_data/recipes/{r.name}.toml). "
            f"Still different from the source: {'; '.join(r.notes)}.")


def by_backbone(suite: catalog.Suite, runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The runs split by backbone: the suite's own backbone first (the published rows' one), then
    the others by name. A run that records no backbone counts as on the suite's."""
    runs = runs.assign(backbone=runs["backbone"].where(runs["backbone"] != "", suite.backbone))
    names = sorted(set(runs["backbone"]), key=lambda b: (b != suite.backbone, b))
    return [(b, runs[runs["backbone"] == b].reset_index(drop=True)) for b in names]


def board_runs(suite: catalog.Suite, all_runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One backbone's runs as its leaderboard counts them: (labelled runs, finished runs of the
    catalog's tasks, the latest finished run per (row, task, seed))."""
    labelled = label_rows(all_runs)
    finished = labelled[~labelled["failed"]]
    known = finished[finished["task"].isin(list(suite.tasks))]
    return labelled, known, latest_per_seed(known)


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
            delta_notes.append(_not_released(suite, sorted(set(runs.loc[~released, "label"]))))
    lines = [build_table(cells, tasks, groups, summary, partial, paper, delta, suite_stats), ""]
    lines += [f"- {n}" for n in notes(suite, runs, tasks, groups, commit, ref_rows, reference)]
    lines += [f"- {n}" for n in stats_notes(tasks)]
    lines += [f"- {n}" for n in list(partial.values()) + failed_notes(lost) + delta_notes]
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


def row_name(label: str, backbone: str, suite: catalog.Suite, several: bool) -> str:
    """A row's name outside its own leaderboard (plots, `bench compare`): with several backbones,
    rows of a backbone other than the suite's carry it: ``lora [vit_large_patch16_224]``."""
    return f"{label} [{backbone}]" if several and backbone != suite.backbone else label


@dataclass
class Rendered:
    """A suite's report: the markdown, the JSON and the PNGs by file name (in reading order)."""
    text: str
    summary: pd.DataFrame
    stats_json: dict
    pngs: dict[str, bytes]


def cd_name(suite: catalog.Suite, backbone: str, first: bool) -> str:
    return f"{suite.name}_cd.png" if first else f"{suite.name}_cd_{backbone}.png"


def board_stats(board: Board, suite: catalog.Suite, first: bool, level: str,
                pngs: dict[str, bytes]) -> list[str]:
    """The statistics section of one board (rows with a failed seed left out, as in its Avg rank
    column); its CD diagram goes into ``pngs``."""
    stats = board.stats
    name = None
    if stats.pairs:
        name = cd_name(suite, board.backbone, first)
        title = suite.title if first else f"{suite.title} on {board.backbone}"
        pngs[name] = stats_report.cd_png(stats, title)
    return stats_report.section(stats, name, level)


def stats_json(suite: catalog.Suite, boards: list[Board]) -> dict:
    """``<suite>_stats.json``: the statistics of the first leaderboard (the suite's own backbone when
    it has runs) at the top level, those of other backbones under ``other_backbones``."""
    def of(b: Board) -> dict:  # rows with a failed seed left out, as in the markdown
        return st.to_json(b.stats)

    first, *others = boards
    out = {"suite": suite.name, "backbone": first.backbone, **of(first)}
    if others:
        out["other_backbones"] = {b.backbone: of(b) for b in others}
    return out


def render(suite: catalog.Suite, all_runs: pd.DataFrame, commit: tuple[str, str] | None = None,
           tuning: tuple[list, str] | None = None) -> Rendered:
    """The whole report of a suite. ``commit``: (the current commit, where it comes from); by
    default the checkout's (``checkout_commit``). ``tuning``: (the suite's tuning studies, where
    they were read) from ``bench.tuning_analysis.collect``, or (None, why there are none)."""
    commit = commit or checkout_commit(all_runs[~all_runs["failed"]])
    reference = load_reference(suite.name)
    boards = [leaderboard(suite, runs, commit, backbone == suite.backbone, backbone)
              for backbone, runs in by_backbone(suite, all_runs)]
    several = len(boards) > 1
    pngs: dict[str, bytes] = {}
    lines = [f"# {suite.title} leaderboard", ""]
    if not several:
        b, = boards
        lines += [f"Rendered by `bench report` from {b.n_runs} finished final runs on backbone `{b.backbone}` in "
                  f"the MLflow experiment `{tracking.experiment_name(suite.name)}` ({b.summary.shape[0]} rows, "
                  f"{len(b.tasks)} tasks). Current commit: {commit[0]}.", "", *b.lines]
        if reference is not None and b.backbone != suite.backbone:
            lines.append(f"- {_not_compared(suite, b.backbone)}")
        lines += ["", *board_stats(b, suite, True, "##", pngs)]
    else:
        lines += [f"Rendered by `bench report` from {sum(b.n_runs for b in boards)} finished final runs in the "
                  f"MLflow experiment `{tracking.experiment_name(suite.name)}` on {len(boards)} backbones: one "
                  f"leaderboard per backbone (rows, means and bold marks never mix backbones). Current commit: "
                  f"{commit[0]}.", ""]
        for i, b in enumerate(boards):
            own = b.backbone == suite.backbone
            lines += [f"## Backbone `{b.backbone}`" + (" (the published rows' backbone)" if own else ""), "",
                      f"{b.n_runs} finished final runs ({b.summary.shape[0]} rows, {len(b.tasks)} tasks).", "",
                      *b.lines]
            if reference is not None and not own:
                lines.append(f"- {_not_compared(suite, b.backbone)}")
            lines += ["", *board_stats(b, suite, i == 0, "###", pngs), ""]
    summary = pd.concat([b.summary.assign(backbone=b.backbone)
                         .rename(index=lambda label, b=b: row_name(label, b.backbone, suite, several))
                         for b in boards])
    trade_lines, trade_pngs = tradeoff.section(summary, suite.name, suite.title)
    lines += ["", *trade_lines, ""]
    pngs.update(trade_pngs)
    if tuning is not None:
        results, where = tuning
        if results is None:
            lines += ["## Tuning (Optuna)", "", f"Tuning analysis omitted: {where.rstrip('.')}.", ""]
        else:
            tune_lines, tune_pngs = tuning_analysis.section(results, where, suite.name, suite.title)
            lines += ["", *tune_lines, ""]
            pngs.update(tune_pngs)
    if reference is not None:
        shown = {t for b in boards for t in b.tasks}
        lines += ["## Published reference", "",
                  f"As transcribed in bench/catalog_data/reference/{suite.name}_reported.csv ('-': not transcribed, "
                  f"never imputed). Rows ending in _star use SSF-style data augmentation: another protocol, "
                  f"never the reference of a run without it.", "",
                  paper_table(reference, [t for t in suite.tasks if t in shown]), ""]
    if all_runs.attrs.get("unidentified"):
        lines += [f"Not counted: {all_runs.attrs['unidentified']} final run(s) written by an older version of bench, "
                  "without an experiment identity (`bench.identity`): rerun them to count them.", ""]
    # one blank line between blocks, however the sections above ended
    text = "\n".join(line for i, line in enumerate(lines) if line or not (i and lines[i - 1] == ""))
    return Rendered(text, summary, stats_json(suite, boards), pngs)


def render_markdown(suite: catalog.Suite, all_runs: pd.DataFrame,
                    commit: tuple[str, str] | None = None) -> tuple[str, pd.DataFrame]:
    """The ``<suite>.md`` text without a tuning section, and the per-row summary the plots draw."""
    r = render(suite, all_runs, commit)
    return r.text, r.summary


def _not_released(suite: catalog.Suite, labels: list[str]) -> str:
    """Why rows on the suite's backbone have no paper column: their weights are not the release."""
    known = (f"its SHA-256 is listed in the catalog ({', '.join(h[:12] for h in suite.paper_weights_sha256)})"
             if suite.paper_weights_sha256 else
             "the catalog lists no SHA-256 of that file yet (`paper_weights_sha256` in "
             f"bench/catalog_data/{suite.name}.toml), so no run is compared")
    return (f"No paper column or Δ for {', '.join(labels)}: the published rows were measured with the original "
            f"ImageNet-21k release ({suite.paper_weights}); these runs used other weights (or weights not "
            f"verified to be that file: {known}).")


def _not_compared(suite: catalog.Suite, backbone: str) -> str:
    return (f"No paper column: the published rows of {suite.title} were measured on {suite.backbone}; results "
            f"on {backbone} are never compared with them.")


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


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder and rename: never a half-written report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 -> what the umask gives any new file
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tuning_source(storage: str | None, uri: str, suite: catalog.Suite) -> tuple[list | None, str]:
    """(the suite's tuning studies, where they were read) for the tuning section, or (None, why
    there are none). ``storage``: ``--storage`` (missing or unreadable: a UserError); by default
    the Optuna storage beside a SQLite MLflow store, if there is one (unreadable: the section says
    so, and the leaderboards are still written)."""
    explicit = bool(storage)
    if not explicit:
        found = tuning_analysis.default_storage(uri)
        if found is None:
            return None, ("no Optuna storage found beside the MLflow store (optuna.db or optuna.journal); "
                          "pass --storage")
        storage = str(found)
    where = f"`{Path(storage).name}`" if "://" not in storage else f"the {storage.split('://', 1)[0]} storage"
    try:
        try:
            results, _ = tuning_analysis.collect(tuning_analysis.open_existing(storage), suite)
        except UserError:
            raise
        except Exception as exc:  # optuna and sqlalchemy raise many types for a storage they cannot read
            raise UserError(f"cannot read Optuna storage {storage}: {first_line(exc)}") from None
    except UserError as exc:
        if explicit:
            raise
        return None, str(exc)
    return results, where


def write_report(suite: catalog.Suite, runs: pd.DataFrame, out: Path,
                 tuning: tuple[list | None, str] | None = None) -> list[Path]:
    """Render one suite to ``<out>/<suite>.md``, ``<out>/<suite>_stats.json`` and its PNGs
    (``_params``, ``_throughput``, ``_memory`` where recorded, ``_cd`` where tested, ``_tuning``
    where a storage has studies). The markdown goes last: it never links a PNG not yet written."""
    import json

    r = render(suite, runs, tuning=tuning)
    md, js = out / f"{suite.name}.md", out / f"{suite.name}_stats.json"
    pngs = [out / name for name in r.pngs]
    files = {**{path: r.pngs[path.name] for path in pngs},
             js: (json.dumps(r.stats_json, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
                  + "\n").encode("utf-8"),
             md: r.text.encode("utf-8")}
    # all or nothing: every file is written beside its place first (a full disk fails here, and
    # the staged files are removed), then each is renamed into place
    staged = {path: path.with_name(f".{path.name}.staged-{os.getpid()}") for path in files}
    try:
        for path, data in files.items():
            write_atomic(staged[path], data)
        for path in files:  # the markdown goes last
            os.replace(staged[path], path)
    except OSError as exc:
        for partial in staged.values():
            partial.unlink(missing_ok=True)
        raise UserError(f"cannot write the report to {out}: {exc.strerror or first_line(exc)}") from None
    return [md, js, *pngs]


def main(args) -> int:
    """`bench report`: every suite with final runs, or ``--suite``; prints the written paths."""
    uri = args.tracking_uri or tracking.default_tracking_uri()
    storage = getattr(args, "storage", None)  # `bench run` calls this without one
    if args.suite:
        catalog.load_suite(args.suite)  # an unknown suite fails before the store is touched
    check_store(uri)
    if storage:
        tuning_analysis.open_existing(storage)  # a missing or damaged storage fails before anything is written
    else:  # the one found beside the MLflow store: damaged is an error too, not a report without it
        found = tuning_analysis.default_storage(uri)
        if found is not None and found.suffix == ".db":
            tracking.check_sqlite(found, "Optuna storage")
    names = [args.suite] if args.suite else catalog.suite_names()
    suites, older = [], 0
    for name in names:
        runs = final_runs(uri, name)
        older += runs.attrs["unidentified"]
        if not (runs.empty or runs["failed"].all()):
            suites.append((catalog.load_suite(name), runs))
    out, written = Path(args.out), []
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders writable_dir makes
    if suites:  # where the report goes is checked before anything is rendered
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a folder; give a folder for the report")
        from .run.spec import writable_dir

        writable_dir(out)
    try:
        for suite, runs in suites:
            written += write_report(suite, runs, out, tuning_source(storage, uri, suite))
    except BaseException:
        for folder in made if not written else ():  # a failed report leaves no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    if not written:
        where = f"suite {args.suite}" if args.suite else f"any suite ({', '.join(names)})"
        why = (f" ({older} final runs there were written by an older version of bench, without an experiment "
               "identity: rerun them)") if older else ""
        raise UserError(f"no finished final runs of {where} in MLflow store {uri}{why}")
    for path in written:
        print(path)
    return 0
