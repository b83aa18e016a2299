"""From runs to cells: the runs split by backbone, labelled by row (one per experiment identity),
one run per (row, task, seed) (the latest: a rerun replaces, never adds), the seeds whose final
fit failed, then per (row, task) the cell (mean and sample std over seeds, seed count, stale) and
per row the summary the tables and plots show (group and overall means, params, PPT, throughput,
memory, whether its mean is ranked). Numbers only: how they print is ``board``'s job.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import catalog, identity, tracking

PPT_SCALE = 1e7  # V-PETL Bench's C


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
    # the device class its throughput and memory were measured on ("CPU", "NVIDIA H100 80GB HBM3"; several
    # joined by ", "; "" for runs from before it was recorded)
    names = runs["device_name"] if "device_name" in runs else pd.Series("", index=runs.index)
    out["measured_on"] = names.groupby(runs["label"]).agg(
        lambda ns: ", ".join(sorted({n for n in ns if n}))).reindex(out.index, fill_value="")
    out["ppt"] = ppt(out["mean_tasks"], out[tracking.PARAMS_TOTAL])
    out["all_seeds"] = cells["failed"].groupby("label").sum().reindex(out.index, fill_value=0) == 0
    out["ranked"] = out["complete"] & out["all_seeds"]  # a mean over fewer tasks or seeds is no contest
    return out.sort_index()


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


def row_name(label: str, backbone: str, suite: catalog.Suite, several: bool) -> str:
    """A row's name outside its own leaderboard (plots, `bench compare`): with several backbones,
    rows of a backbone other than the suite's carry it: ``lora [vit_large_patch16_224]``."""
    return f"{label} [{backbone}]" if several and backbone != suite.backbone else label
