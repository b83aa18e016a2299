"""The published reference: the rows each suite's papers report
(``bench/catalog_data/reference/<suite>_reported.csv``, package data), which of them a row of ours
is compared with (``PAPER_ROW``: method and variant), the paper column and Δ (ours minus paper,
like with like), the table of reference rows as published, and the notes that say why a row or a
backbone gets no paper column.
"""
from __future__ import annotations

import pandas as pd

from .. import catalog
from .format import markdown_table

REFERENCE_DIR = catalog.CATALOG_DIR / "reference"
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
    # issue 31's vision methods: V-PETL Bench's rows (gps, dtl) and SPT's FGVC rows as SNELL quotes
    # them (datasets/reference/SOURCES.md); a suite without the row gets no paper column
    ("gps", ""): "gps",
    ("dtl", ""): "dtl",
    ("spt_lora", ""): "spt_lora",
    ("spt_adapter", ""): "spt_adapter",
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
    return markdown_table(rows, headers)


def not_released(suite: catalog.Suite, labels: list[str]) -> str:
    """Why rows on the suite's backbone have no paper column: their weights are not the release."""
    known = (f"its SHA-256 is listed in the catalog ({', '.join(h[:12] for h in suite.paper_weights_sha256)})"
             if suite.paper_weights_sha256 else
             "the catalog lists no SHA-256 of that file yet (`paper_weights_sha256` in "
             f"bench/catalog_data/{suite.name}.toml), so no run is compared")
    return (f"No paper column or Δ for {', '.join(labels)}: the published rows were measured with the original "
            f"ImageNet-21k release ({suite.paper_weights}); these runs used other weights (or weights not "
            f"verified to be that file: {known}).")


def not_compared(suite: catalog.Suite, backbone: str) -> str:
    return (f"No paper column: the published rows of {suite.title} were measured on {suite.backbone}; results "
            f"on {backbone} are never compared with them.")
