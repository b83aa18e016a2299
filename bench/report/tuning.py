"""What the Optuna studies say about tuning: per method (variant), how far the default
trial is from the tuned best (how much the method depends on tuning), whether the trial budget
sufficed (best-so-far validation accuracy against the number of trials), and which
hyperparameters mattered (``optuna.importance``, fANOVA).

Read only: a storage file that is not there is never created (``open_storage``). Studies are
found by the identity each stores (``bench.run.study.study_cell``: a tuning study of the suite), never
by their names; final-fit studies and studies of other versions are skipped. Rows are labelled as
the leaderboard labels them (``identity.row_labels``, per backbone). The default trial is
the one ``Runner`` enqueued first (user attribute ``default_trial``); the tuned best is the best
COMPLETE trial (highest value, ties to the lowest number). Only COMPLETE and PRUNED trials are
finished; a pruned trial counts as a trial of the budget but has no value.
Which storage a report reads (``tuning_source``): ``--storage``, else the one beside a SQLite MLflow
store (``default_storage``); without one, the section says why.

The best-so-far plot is drawn here rather than with ``optuna.visualization.matplotlib``: that
draws one study per figure on pyplot's global state, and a suite has one study per (method,
task): here a method's curve is the mean over its tasks, one figure for the suite.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import catalog
from ..errors import UserError, first_line
from .format import fmt, markdown_table
from .png import figure, png_bytes

FANOVA_TREES = 16  # optuna's default is 64: 4x slower, for a mean over tasks that moves little
FANOVA_SEED = 0
FEW_TRIALS = 10  # below this many finished trials per study, importances are rough: said so


# --------------------------------------------------------------------------- the storage

def default_storage(tracking_uri: str) -> Path | None:
    """Beside a SQLite MLflow store ``DIR/mlflow.db``: ``DIR/optuna.db``, else ``DIR/optuna.journal``,
    whichever exists first; None when neither does or the store is not a SQLite file. The store's
    file is read from the URI as SQLAlchemy (and so MLflow) reads it (``tracking.sqlite_path``)."""
    from ..tracking import sqlite_path

    store = sqlite_path(tracking_uri)
    if store is None:
        return None
    folder = store.parent
    for name in ("optuna.db", "optuna.journal"):
        if (folder / name).is_file():
            return folder / name
    return None


def open_existing(spec: str | Path):
    """Open a storage that exists, never creating one: a ``sqlite:///`` file or a journal file
    must be there (and undamaged, ``tracking.check_sqlite``); a server URL (PostgreSQL, MySQL) is
    opened without creating tables. URLs are built from paths and read back as the store reads
    them (``tracking.sqlite_url``, ``tracking.sqlite_path``): a path holding ``#`` works, one that no
    URL carries verbatim (``?``, ``%``) is refused rather than opening another file."""
    from ..run.study import open_storage_readonly

    return open_storage_readonly(str(spec))


# --------------------------------------------------------------------------- the studies

@dataclass
class StudyResult:
    """One tuning study, reduced to what the section shows."""
    label: str  # the leaderboard's row name of the method variant ("lora", "lora (rank=4)")
    method: str
    task: str
    finished: int  # COMPLETE + PRUNED trials
    default: float  # the default trial's value (NaN: none, or it was pruned)
    best: float  # the best COMPLETE value (NaN: none)
    best_at: int  # 1-based position among finished trials where the best was first reached (0: none)
    curve: list[float] = field(default_factory=list)  # best-so-far after each finished trial
    importances: dict[str, float] = field(default_factory=dict)


def is_default(trial) -> bool:
    """Whether a trial ran the defaults: the trial ``Runner`` enqueued first, or its copy
    re-queued after an interruption (the user attributes travel with it)."""
    return bool(trial.user_attrs.get("default_trial") or trial.user_attrs.get("recipe_default"))  # the latter: studies before 2026-12-06


def study_result(storage, name: str, label: str, method: str, task: str, importances: bool = True) -> StudyResult:
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                    key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    default = next((t for t in trials if is_default(t)), None)
    default_value = float(default.value) if default is not None and default.state == TrialState.COMPLETE else math.nan
    curve, best, best_at = [], math.nan, 0
    for i, t in enumerate(trials, start=1):
        if t.state == TrialState.COMPLETE and (math.isnan(best) or t.value > best):
            best, best_at = float(t.value), i
        curve.append(best)
    result = StudyResult(label, method, task, len(trials), default_value, best, best_at, curve)
    if importances and len(complete) >= 2:
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=FANOVA_TREES, seed=FANOVA_SEED)
            result.importances = {k: float(v) for k, v in
                                  optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. no parameter varies
            result.importances = {}
    return result


def collect(storage, suite, importances: bool = True) -> tuple[list[StudyResult], int]:
    """The suite's tuning studies (sorted by label, then task) and how many other studies of the
    storage were skipped (final fits, other suites, other versions)."""
    import optuna

    from ..identity import row_labels
    from ..run.study import ROLE_TUNING, study_cell, study_role

    cells, skipped = {}, 0
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        cell = study_cell(summary) if study_role(summary) == ROLE_TUNING else None
        if cell is None or cell.experiment.suite != suite.name or cell.task not in suite.tasks:
            skipped += 1
            continue
        cells[summary.study_name] = cell
    labels = {}
    for backbone in {c.experiment.backbone for c in cells.values()}:
        mine = sorted((n for n, c in cells.items() if c.experiment.backbone == backbone))
        for e, label in row_labels([cells[n].experiment for n in mine]).items():
            labels[e] = label if backbone == suite.backbone else f"{label} [{backbone}]"
    out = [study_result(storage, name, labels[c.experiment], c.experiment.method, c.task, importances)
           for name, c in sorted(cells.items())]
    order = {t: i for i, t in enumerate(suite.tasks)}
    return sorted(out, key=lambda r: (r.label, order[r.task])), skipped


def tuning_source(storage: str | None, uri: str, suite: catalog.Suite) -> tuple[list | None, str]:
    """(the suite's tuning studies, where they were read) for the tuning section, or (None, why
    there are none). ``storage``: ``--storage`` (missing or unreadable: a UserError); by default
    the Optuna storage beside a SQLite MLflow store, if there is one (unreadable: the section says
    so, and the leaderboards are still written)."""
    explicit = bool(storage)
    if not explicit:
        found = default_storage(uri)
        if found is None:
            return None, ("no Optuna storage found beside the MLflow store (optuna.db or optuna.journal); "
                          "pass --storage")
        storage = str(found)
    where = f"`{Path(storage).name}`" if "://" not in storage else f"the {storage.split('://', 1)[0]} storage"
    try:
        try:
            results, _ = collect(open_existing(storage), suite)
        except UserError:
            raise
        except Exception as exc:  # optuna and sqlalchemy raise many types for a storage they cannot read
            raise UserError(f"cannot read Optuna storage {storage}: {first_line(exc)}") from None
    except UserError as exc:
        if explicit:
            raise
        return None, str(exc)
    return results, where


# --------------------------------------------------------------------------- per method

def per_method(results: list[StudyResult]) -> pd.DataFrame:
    """One row per method label: studies, finished trials (min, max), mean default and tuned
    validation accuracy over the studies that have both, their mean and largest gap, how often
    the default was the best, the median position of the best, how many studies found their best
    in the last quarter of their trials, and the mean importance of each hyperparameter."""
    rows = []
    for label in sorted({r.label for r in results}):
        rs = [r for r in results if r.label == label]
        both = [r for r in rs if not math.isnan(r.default) and not math.isnan(r.best)]
        gaps = [r.best - r.default for r in both]
        found = [r for r in rs if r.best_at]
        late = sum(1 for r in found if r.best_at > 0.75 * r.finished)
        keys = sorted({k for r in rs for k in r.importances})
        with_imp = [r for r in rs if r.importances]
        imp = {k: float(np.mean([r.importances.get(k, 0.0) for r in with_imp])) for k in keys} if with_imp else {}
        rows.append({"label": label, "studies": len(rs),
                     "trials_min": min(r.finished for r in rs), "trials_max": max(r.finished for r in rs),
                     "with_default": len(both),
                     "default": float(np.mean([r.default for r in both])) if both else math.nan,
                     "tuned": float(np.mean([r.best for r in both])) if both else math.nan,
                     "gap": float(np.mean(gaps)) if gaps else math.nan,
                     "max_gap": float(np.max(gaps)) if gaps else math.nan,
                     "default_best": sum(1 for g in gaps if g <= 0),
                     "best_at_median": float(np.median([r.best_at for r in found])) if found else math.nan,
                     "with_best": len(found), "late": late,
                     "importance_studies": len(with_imp), "importances": imp})
    return pd.DataFrame(rows).set_index("label") if rows else pd.DataFrame()


def shortfall_curves(results: list[StudyResult]) -> dict[str, np.ndarray]:
    """Per method label: mean over its studies of (best-so-far - the study's final best) after
    trial 1, 2, ...; a study with fewer trials holds its final value. 0 = the budget's best."""
    out = {}
    for label in sorted({r.label for r in results}):
        curves = [r.curve for r in results if r.label == label and r.best_at]
        if not curves:
            continue
        n = max(len(c) for c in curves)
        padded = np.array([[(c[min(i, len(c) - 1)] - c[-1]) for i in range(n)] for c in curves], dtype=float)
        with warnings.catch_warnings():  # a trial index before any study's first complete trial: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out[label] = np.nanmean(padded, axis=0)
    return out


def tuning_table(table: pd.DataFrame) -> str:
    rows = []
    for label, r in table.iterrows():
        trials = f"{r.trials_min}" if r.trials_min == r.trials_max else f"{r.trials_min}–{r.trials_max}"
        rows.append([label, str(r.studies), trials, fmt(r.default, 1), fmt(r.tuned, 1), fmt(r.gap, 1, sign=True),
                     fmt(r.max_gap, 1, sign=True), f"{r.default_best}/{r.with_default}",
                     fmt(r.best_at_median, 1), f"{r.late}/{r.with_best}"])
    headers = ["Method", "Studies", "Trials", "Default (val)", "Tuned (val)", "Gap", "Largest gap",
               "Default was best", "Best at trial (median)", "Best in last quarter"]
    return markdown_table(rows, headers)


def importance_table(table: pd.DataFrame) -> str:
    rows = []
    for label, r in table.iterrows():
        ordered = sorted(r.importances.items(), key=lambda kv: (-round(kv[1], 6), kv[0]))
        rows.append([label, str(r.importance_studies), ", ".join(f"{k} {fmt(v, 2)}" for k, v in ordered) or "-"])
    return markdown_table(rows, ["Method", "Studies", "Importance (fANOVA, mean over studies)"])


def plot_png(table: pd.DataFrame, curves: dict[str, np.ndarray], title: str) -> bytes:
    """Left: mean best-so-far shortfall against trials, one line per method. Right: the mean
    default-to-tuned gap per method."""
    fig = figure(11.0, 4.8)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    styles = ("-", "--", ":", "-.")
    for i, (label, curve) in enumerate(curves.items()):
        left.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=3, color=f"C{i % 10}",
                  linestyle=styles[(i // 10) % len(styles)], label=label)
    left.set_xlabel("Finished trials")
    left.set_ylabel("Best-so-far val acc minus the study's best (points)")
    left.set_title("Does the budget suffice? (mean over tasks)", fontsize=10)
    left.grid(True, alpha=0.3)
    if curves:
        left.legend(fontsize=7, ncol=2, loc="lower right")
        left.xaxis.get_major_locator().set_params(integer=True)
    gaps = table["gap"].dropna().sort_values(kind="stable") if not table.empty else pd.Series(dtype=float)
    right.barh(list(gaps.index), gaps.to_numpy(), color="C0")
    right.set_xlabel("Tuned best minus the default trial (val acc, points)")
    right.set_title("How much tuning adds (mean over tasks)", fontsize=10)
    right.tick_params(axis="y", labelsize=7)
    right.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"{title}: tuning", fontsize=11)
    fig.tight_layout()
    return png_bytes(fig)


def section(results: list[StudyResult], where: str, suite_name: str, title: str,
            level: str = "##") -> tuple[list[str], dict[str, bytes]]:
    """The tuning section's markdown lines and its PNG (``<suite>_tuning.png``)."""
    lines = [f"{level} Tuning (Optuna)", ""]
    if not results:
        return lines + [f"Tuning analysis omitted: {where} holds no tuning study of this suite (of this version "
                        "of bench: studies record their experiment since the identity was defined once).", ""], {}
    table = per_method(results)
    name = f"{suite_name}_tuning.png"
    png = plot_png(table, shortfall_curves(results), title)
    few = table["trials_max"].max() < FEW_TRIALS
    lines += [f"From {len(results)} studies in {where}: validation accuracy (%) on the tuning split, not the "
              f"test accuracy of the leaderboard.", "", tuning_table(table), "",
              "- Default (val): the default trial (common defaults, the method's defaults, fixed values: the "
              "first trial of every study); Tuned (val): the study's best complete trial; both averaged over the "
              "studies that have both (a pruned default trial has no value). Gap: tuned minus default, mean and "
              "largest over those studies: how much the method depends on tuning. Default was best: studies where "
              "no trial beat the defaults.",
              "- Best at trial: the median over studies of the finished trial (1 = first) at which the study's best "
              "was reached; Best in last quarter: studies whose best came in the last 25% of their trials. Many of "
              "those, or a curve still rising at the last trial, say the budget did not suffice.", "",
              f"![Tuning: best-so-far and default-to-tuned gap]({name})", "",
              importance_table(table), "",
              f"- Importance: optuna.importance's fANOVA ({FANOVA_TREES} trees, seed {FANOVA_SEED}) per study, "
              f"normalised to sum 1, then averaged over the method's studies with at least 2 complete trials."
              + (f" With at most {table['trials_max'].max()} finished trials per study (under {FEW_TRIALS}), these "
                 f"are rough: a forest fitted to a handful of points." if few else ""), ""]
    return lines, {name: png}
