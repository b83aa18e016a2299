"""`bench report` against a real (temporary SQLite) MLflow store written with the schema of
bench/tracking.py: exact markdown, determinism, what is not counted, stale marks, paper column,
and the one-line errors."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from bench import catalog, cli, report, tracking
from bench.identity import Experiment

EXPERIMENT_FIELDS = set(Experiment.__dataclass_fields__)

_CLOCK = itertools.count(1_700_000_000_000, 1000)  # start times: later runs are written later

TINY = catalog.Suite(
    name="tiny", title="Tiny", backbone="demo", needs_data_root=False,
    groups=("Natural", "Structured"),
    splits=catalog.Splits("train800", "val200", "train800val200", "test",
                          ("train800", "val200", "train800val200", "test")),
    protocol={}, transform={},
    tasks={
        "digits": catalog.Task("digits", 10, "Natural"),
        "textures": catalog.Task("textures", 20, "Natural"),
        "count": catalog.Task("count", 30, "Structured"),
        "dist": catalog.Task("dist", 40, "Structured"),
    },
)


def log_run(client, exp_id, method, task, seed, acc, *, params_backbone, head=0, img_s=100.0, mem=500.0,
            mode=None, commit="abc123", phase=tracking.PHASE_FINAL, status="FINISHED", group="",
            params=None, tags=None):
    """One run as the runner logs it: tags (its experiment's identity among them), params, end-of-run
    metrics, then its final status. ``params`` that are fields of ``Experiment`` (``_identity``)
    set the run's experiment; the rest are logged as params."""
    start = next(_CLOCK)
    params = dict(params or {})
    fields = {k: params.pop(k) for k in list(params) if k in EXPERIMENT_FIELDS}
    if mode and mode != report.DEFAULT_MODE.get(method):  # as `--hparam vpt.mode=shallow` records it
        fields["fixed"] = (*fields.get("fixed", ()), ("mode", mode))
    suite = client.get_experiment(exp_id).name.removeprefix(tracking.EXPERIMENT_PREFIX)
    backbone = TINY.backbone if suite == "tiny" else catalog.load_suite(suite).backbone
    experiment = Experiment(**{**_identity_fields(), "suite": suite, "backbone": backbone, **fields,
                               "method": method})
    tags = {"phase": phase, "suite": "x", "method": method, "task": task, "group": group,
            "seed": str(seed), "git_commit": commit, tracking.EXPERIMENT_TAG: experiment.to_json(), **(tags or {})}
    run_id = client.create_run(exp_id, start_time=start, tags=tags).info.run_id
    params = ([Param("method", method), Param("seed", str(seed))] + ([Param("mode", mode)] if mode else [])
              + [Param(k, str(v)) for k, v in (params or {}).items()])
    metrics = {tracking.TEST_ACC: acc, tracking.PARAMS_BACKBONE: params_backbone,
               tracking.PARAMS_TOTAL: params_backbone + head, tracking.TRAIN_IMG_PER_S: img_s,
               tracking.PEAK_MEM_MB: mem}
    client.log_batch(run_id, params=params,
                     metrics=[Metric(k, float(v), start, 0) for k, v in sorted(metrics.items())])
    if status != "RUNNING":
        client.set_terminated(run_id, status, end_time=start + 500)
    return run_id


def _identity_fields(epochs=4, weights="a" * 64) -> dict:
    return {"suite": "tiny", "backbone": "demo", "weights_sha256": weights, "epochs": epochs,
            "warmup_epochs": 1, "batch_size": 64, "trials": 2, "drop_path_rate": 0.0}


def log_cells(client, exp_id, method, table, heads, **kw):
    """``table``: {task: [acc per seed]}; seeds are 1, 2, ...; the head size comes from ``heads``."""
    for task, accs in table.items():
        for seed, acc in enumerate(accs, start=1):
            log_run(client, exp_id, method, task, seed, acc, head=heads[task], **kw)


def fill_tiny(client):
    heads = {"digits": 10_000, "textures": 20_000, "count": 30_000, "dist": 40_000}
    exp = client.create_experiment(tracking.experiment_name("tiny"))
    # superseded by the rerun of the same (method, task, seed) below: must not count
    log_run(client, exp, "full", "digits", 1, 10.0, params_backbone=1_000_000, head=10_000)
    log_cells(client, exp, "full", {"digits": [90, 92], "textures": [70, 74], "count": [60, 60],
                                    "dist": [50, 54]}, heads, params_backbone=1_000_000, img_s=100, mem=900)
    log_cells(client, exp, "linear", {"digits": [80, 81], "textures": [60, 61], "count": [40, 42],
                                      "dist": [30, 30]}, heads, params_backbone=0, img_s=400, mem=300)
    log_cells(client, exp, "lora", {"digits": [91, 93], "textures": [72, 72], "count": [62, 64]},
              heads, params_backbone=50_000, img_s=150, mem=700)
    log_cells(client, exp, "vpt", {"digits": [85, 86], "textures": [65, 66], "count": [55, 56],
                                   "dist": [45, 46]}, heads, params_backbone=20_000, mode="deep", img_s=120, mem=800)
    log_cells(client, exp, "vpt", {"digits": [84], "textures": [64], "count": [54], "dist": [44]},
              heads, params_backbone=2_000, mode="shallow", img_s=130, mem=750)
    # never counted: a failed and a still-running final run, a finished trial
    log_run(client, exp, "full", "digits", 3, 99.9, params_backbone=1, status="FAILED")
    log_run(client, exp, "linear", "digits", 3, 99.9, params_backbone=1, status="RUNNING")
    log_run(client, exp, "full", "digits", 1, 99.9, params_backbone=1, phase=tracking.PHASE_TRIAL)


def fill_vtab(client):
    suite = catalog.load_suite("vtab1k")
    heads = {t.name: 769 * t.num_classes for t in suite.tasks.values()}
    exp = client.create_experiment(tracking.experiment_name("vtab1k"))
    # lora's clevr_count ran at an older commit and before everything else: its cell is stale
    log_run(client, exp, "lora", "clevr_count", 1, 50.0, params_backbone=294_912, head=heads["clevr_count"],
            commit="old000")
    log_cells(client, exp, "full", {t: [70.0] for t in suite.tasks}, heads, params_backbone=85_798_656,
              commit="new111")
    four = ["cifar", "dtd", "eurosat", "clevr_count"]
    log_cells(client, exp, "rlrr", {t: [80.0, 81.0] for t in four}, heads, params_backbone=288_768,
              commit="new111")
    log_cells(client, exp, "lora", {t: [60.0] for t in four[:3]}, heads, params_backbone=294_912,
              commit="new111")
    log_cells(client, exp, "ssf", {"cifar": [65.0]}, heads, params_backbone=205_824, commit="new111")
    log_cells(client, exp, "adapter", {"cifar": [66.0]}, heads, params_backbone=156_768, mode="parallel",
              commit="new111")
    log_cells(client, exp, "vpt", {"cifar": [64.0]}, heads, params_backbone=9_216, mode="shallow",
              commit="new111")


def fill_fgvc(client):
    heads = {"cub_200_2011": 153_800, "nabirds": 427_350}
    exp = client.create_experiment(tracking.experiment_name("fgvc"))
    log_cells(client, exp, "rlrr", {"cub_200_2011": [90.0], "nabirds": [85.0]}, heads, params_backbone=288_768)
    log_cells(client, exp, "adapter", {"cub_200_2011": [88.0], "nabirds": [80.0]}, heads,
              params_backbone=156_768, mode="parallel")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one costs about a second)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    fill_tiny(client)
    fill_vtab(client)
    fill_fgvc(client)
    return uri


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('empty') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the tables
    return uri


@pytest.fixture(autouse=True)
def no_checkout(monkeypatch):
    """Render as an installed copy would (no git checkout): the current commit is that of the
    newest final run. ``test_stale_against_the_checkout`` sets a checkout commit instead."""
    monkeypatch.setattr(tracking, "git_commit", lambda: "unknown")


RELEASE = "a" * 64  # the weights most runs here log: the suites' paper release in these tests


@pytest.fixture(autouse=True)
def released(monkeypatch):
    """The real suites list ``RELEASE`` as the SHA-256 of the published rows' weights file, so runs on
    it get the paper column (``test_other_weights_get_a_note_instead_of_the_paper_column``: not)."""
    import dataclasses

    real = catalog.load_suite
    monkeypatch.setattr(catalog, "load_suite", lambda name: dataclasses.replace(
        real(name), paper_weights_sha256=(RELEASE,)) if name in ("vtab1k", "fgvc") else real(name))


@pytest.fixture
def tiny(monkeypatch):
    """The catalog knows the tiny suite too (only for load_suite; it is not a listed suite)."""
    real = catalog.load_suite
    monkeypatch.setattr(catalog, "load_suite", lambda name: TINY if name == "tiny" else real(name))


def bench_report(capsys, *argv):
    """Run `bench report ...` through the real CLI; (exit code, stdout, stderr)."""
    code = cli.main(["report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def render(capsys, store, tmp_path, suite):
    code, out, err = bench_report(capsys, "--suite", suite, "--tracking-uri", store, "--out", str(tmp_path))
    assert code == 0, err
    written = out.split()
    assert written[:3] == [str(tmp_path / f"{suite}.md"), str(tmp_path / f"{suite}_stats.json"),
                           str(tmp_path / f"{suite}_params.png")] or str(tmp_path / f"{suite}_cd.png") == written[2]
    assert all(Path(p).is_file() for p in written)
    return (tmp_path / f"{suite}.md").read_text(encoding="utf-8")


# The tiny suite, worked by hand: full digits (90, 92) -> 91.0 ± 1.4; Natural mean (91 + 72) / 2;
# Mean (91 + 72 + 60 + 52) / 4 = 68.75; PPT 0.6875 * exp(-log10(1.025e6 / 1e7 + 1)) = 0.659.
# lora has no dist run: "-", ‡ and a note; its 3-task means are not ranked (no bold).
# full's digits seed 3 FAILED and was never redone: "§" and a note; full's means are not ranked.
# linear's throughput (a linear probe) is never ranked. vpt shallow (not the default mode) is its own row.
# Not counted: the superseded 10.0, the FAILED and RUNNING final runs and the trial (all 99.9).
# Avg rank: lora misses dist and full has a failed seed: neither is ranked ("-"; the statistics section names
# both); vpt, vpt (mode=shallow), linear rank 1, 2, 3 on every task; 4 tasks < 5: the tests are omitted, with
# the reason.
# 95% CI (seeds): every row has at most 2 seeds per cell, so "-" everywhere (no interval below 3 seeds).
# Pareto fronts among ranked rows (full has a failed seed, lora misses a task; linear is never on the
# throughput front): params linear < vpt (mode=shallow) < vpt; throughput 130 (shallow) then 120 (vpt).
EXPECTED_TINY = """\
# Tiny leaderboard

Rendered by `bench report` from 34 finished final runs on backbone `demo` in the MLflow experiment `peft-bench/tiny` (5 rows, 4 tasks). Current commit: abc123.

| Method             | Seeds   | digits         | textures       | Natural mean   | count          | dist           | Structured mean   | Mean (4 tasks)   | 95% CI (seeds)   | Avg rank   | Mean of 2 group means   | Params (M, no head)   | Params (M, with heads)   | PPT       | Train img/s   | Peak mem (MB)   |
|--------------------|---------|----------------|----------------|----------------|----------------|----------------|-------------------|------------------|------------------|------------|-------------------------|-----------------------|--------------------------|-----------|---------------|-----------------|
| full               | 2       | 91.0 ± 1.4 §   | **72.0 ± 2.8** | 81.5           | 60.0 ± 0.0     | **52.0 ± 2.8** | **56.0**          | 68.8             | -                | -          | 68.8                    | 1.000                 | 1.025                    | 0.659     | 100.0         | 900             |
| linear             | 2       | 80.5 ± 0.7     | 60.5 ± 0.7     | 70.5           | 41.0 ± 1.4     | 30.0 ± 0.0     | 35.5              | 53.0             | -                | 3.00       | 53.0                    | **0.000**             | **0.025**                | 0.529     | 400.0         | **300**         |
| lora ‡             | 2       | **92.0 ± 1.4** | **72.0 ± 0.0** | **82.0**       | **63.0 ± 1.4** | -              | 63.0              | 75.7             | -                | -          | 72.5                    | 0.050                 | 0.070                    | 0.754     | **150.0**     | 700             |
| vpt                | 2       | 85.5 ± 0.7     | 65.5 ± 0.7     | 75.5           | 55.5 ± 0.7     | 45.5 ± 0.7     | 50.5              | **63.0**         | -                | **1.00**   | **63.0**                | 0.020                 | 0.045                    | **0.629** | 120.0         | 800             |
| vpt (mode=shallow) | 1       | 84.0           | 64.0           | 74.0           | 54.0           | 44.0           | 49.0              | 61.5             | -                | 2.00       | 61.5                    | 0.002                 | 0.027                    | 0.614     | 130.0         | 750             |

- Cells: top-1 test accuracy (%) at the last epoch, mean ± sample std (ddof=1) over seeds; a single seed shows its value alone. Seeds: seeds per cell (a range when the row's cells differ). A (method, task, seed) fitted more than once counts once: its latest run.
- Mean (4 tasks): mean over the task columns; Natural mean, Structured mean: mean over the group's task columns; Mean of 2 group means: mean of those 2. A method's means are over the tasks it has runs for.
- Params (M, no head): trainable parameters without the classifier head (params_backbone); Params (M, with heads): trainable parameters with the head, averaged over tasks (params_total).
- PPT (V-PETL Bench performance-parameter trade-off) = Mean / 100 × exp(−log10(P / 10^7 + 1)), Mean = Mean (4 tasks) in %, P = trainable parameters with heads.
- Train img/s: training images per second of training wall time (a linear probe's includes its one pass of feature extraction per split, then trains the head on cached features: not comparable with backpropagating methods, so never ranked); Peak mem (MB): peak memory (GPU only); both averaged over the method's runs.
- Bold: the best value of each column of ours (highest accuracy, PPT and throughput; lowest params and memory); a mean over fewer tasks (‡) or with failed seeds (§) is not ranked.
- Rows named 'method (...)' are experiments other than the suite's main one (that of most final runs): what differs is in the brackets (fixed hyperparameters, protocol, weights, data); their runs never join another row's cells.
- 95% CI (seeds): an interval over seeds for Mean (4 tasks): per seed, the row's mean over its tasks with that seed; the 95% t-interval of their mean (n seeds, n − 1 degrees of freedom). It says how far Mean would move if the row were rerun with other seeds, the tasks fixed; it is not about other tasks (the statistics section is). '-' with fewer than 3 seeds per cell (a 2-seed percentile bootstrap is about 30% too narrow, a 2-seed t-interval has one degree of freedom, and one seed has no spread to measure) or where the row's cells do not all have the same seeds (a failed seed, §).
- Avg rank: the row's rank on each task (1 = best, ties averaged) among the rows that have every task and every seed, averaged over the tasks; '-' for a row that misses a task (‡) or has a failed seed (§): those are left out of the ranks and the tests (see the statistics section).
- ‡ lora: no finished final run for dist; its means are over 3 of 4 tasks.
- § full/digits: 1 seed(s) failed and not redone: seed 3 (no reason recorded); the cell is over the seeds that finished.
- Not counted: 1 final run(s) superseded by a later run of the same experiment, method, task and seed.

## Statistics: which differences are real

Not compared (no final run for every task shown): lora.

Not compared (a seed's final fit failed and was not redone, § in the leaderboard: a cell over the surviving seeds is no contest): full.

Compared: 3 rows on the 4 tasks they all have. Avg rank: the mean over tasks of the row's rank on the task (1 = the highest cell; ties share the average rank).

Tests omitted: the compared rows share 4 task(s); tests over tasks need at least 5 (a Wilcoxon test over 4 tasks cannot reach p < 0.125).

## Trade-offs

![Mean accuracy vs trainable parameters](tiny_params.png)

![Mean accuracy vs training throughput](tiny_throughput.png)

![Mean accuracy vs peak training memory](tiny_memory.png)

- Pareto front, accuracy vs trainable parameters: linear, vpt (mode=shallow), vpt.
- Pareto front, accuracy vs training throughput: vpt (mode=shallow), vpt.
- Pareto front, accuracy vs peak training memory: linear, vpt (mode=shallow), vpt.
- Pareto front: the rows that no other row beats on both axes (a mean at least as high at a cost at least as low, and better in one), cheapest first; ringed in the plots. Only rows with a ranked mean (every task, every seed) can be on it, and a linear probe's throughput (training on cached features) never is. Hollow points (‡) miss tasks.

## Tuning (Optuna)

Tuning analysis omitted: no Optuna storage found beside the MLflow store (optuna.db or optuna.journal); pass --storage.
"""


def test_tiny_exact_markdown(store, tiny, capsys, tmp_path):
    assert render(capsys, store, tmp_path, "tiny") == EXPECTED_TINY


def test_same_store_renders_byte_identical_files(store, tiny, capsys, tmp_path):
    first = render(capsys, store, tmp_path / "a", "tiny")
    second = render(capsys, store, tmp_path / "b", "tiny")
    assert first.encode() == second.encode()
    png_a, png_b = (tmp_path / d / "tiny_params.png" for d in "ab")
    assert png_a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_a.read_bytes() == png_b.read_bytes()


def test_no_half_written_files_left(store, tiny, capsys, tmp_path):
    render(capsys, store, tmp_path, "tiny")
    render(capsys, store, tmp_path, "tiny")  # overwriting goes through a rename as well
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.md", "tiny_memory.png", "tiny_params.png",
                                                          "tiny_stats.json", "tiny_throughput.png"]


def test_failed_running_and_trial_runs_are_not_counted(store, tiny, capsys, tmp_path):
    md = render(capsys, store, tmp_path, "tiny")
    assert "99.9" not in md
    assert "from 34 finished final runs" in md  # 35 finished final runs, one superseded


def first_table(md: str) -> dict[str, dict[str, str]]:
    """The leaderboard (the first markdown table) as {row label: {column header: cell}}."""
    block = md[md.index("\n|") + 1:].split("\n\n")[0].splitlines()
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    headers = split(block[0])
    rows = [dict(zip(headers, split(line))) for line in block[2:]]
    return {r["Method"]: r for r in rows}


def test_vtab_paper_column_and_delta(store, capsys, tmp_path):
    md = render(capsys, store, tmp_path, "vtab1k")
    rows = first_table(md)
    # full ran all 19 tasks: Δ = 70.0 - 65.6, and only complete rows are ranked
    assert rows["full"]["paper"] == "65.6" and rows["full"]["Δ"] == "**+4.4**"
    assert rows["full"]["Mean (19 tasks)"] == "**70.0**"
    assert rows["full"]["Mean of 3 group means"] == "**70.0**"
    # rlrr ran 4 tasks: Δ = mean of (80.5 - 75.6, 80.5 - 72.9, 80.5 - 95.2, 80.5 - 79.7) = -0.35
    assert rows["rlrr ‡"]["paper"] == "74.5" and rows["rlrr ‡"]["Δ"] == "-0.4"
    assert "Δ of rlrr: mean over its 4 tasks" in md
    # lora (NOAH's per-task row): Δ over its 4 tasks = mean(60-67.1, 60-69.4, 60-95.3, 50-82.9) = -21.2
    assert rows["lora ‡"]["paper"] == "72.3" and rows["lora ‡"]["Δ"] == "-21.2"
    # under which protocol the paper's numbers were obtained (item 12 of issue 11)
    assert "Protocol of the paper column:" in md and "best epoch" in md and "110 epochs" in md
    # ssf_star is another protocol: never ssf's reference
    assert rows["ssf ‡"]["paper"] == "-"
    assert "ssf (only ssf_star, another protocol)" in md
    # one variant in the suite: one row "adapter"/"vpt", still compared with its variant's row
    assert rows["adapter ‡"]["paper"] == "72.3" and "adapter → adaptformer" in md
    assert rows["vpt (mode=shallow) ‡"]["paper"] == "64.9" and "vpt (mode=shallow) → vpt_shallow" in md
    assert "| ssf_star        | other: SSF-style augmentation |" in md
    # group means and both overall means of rlrr: 80.5 everywhere, params 0.289 M
    assert rows["rlrr ‡"]["cifar"] == "**80.5 ± 0.7**" and rows["rlrr ‡"]["caltech101"] == "-"
    assert rows["rlrr ‡"]["Params (M, no head)"] == "0.289"


def test_vtab_stale_cells_are_marked(store, capsys, tmp_path):
    md = render(capsys, store, tmp_path, "vtab1k")
    rows = first_table(md)
    assert rows["lora ‡"]["clevr_count"] == "50.0 †"
    assert rows["lora ‡"]["cifar"] == "60.0"
    assert "Current commit: new111." in md
    assert "† stale: the cell has runs from another commit (old000) than the current commit new111" in md
    assert md.count("†") == 2


def test_fgvc_hidden_tasks_and_missing_reference_row(store, capsys, tmp_path):
    md = render(capsys, store, tmp_path, "fgvc")
    rows = first_table(md)
    assert list(rows["rlrr"])[2:5] == ["cub_200_2011", "nabirds", "Mean (2 tasks)"]
    assert "neither shown nor in any mean: oxford_flowers, stanford_dogs, stanford_cars (3 of 5)" in md
    assert rows["adapter"]["paper"] == "-"  # FGVC has no adaptformer row
    assert rows["rlrr"]["Δ"] == "**+0.5**"  # (90.0 - 89.3 + 85.0 - 84.7) / 2, the only Δ
    assert "Mean of" not in md  # no groups in FGVC


def test_every_suite_with_final_runs_by_default(store, capsys, tmp_path):
    code, out, err = bench_report(capsys, "--tracking-uri", store, "--out", str(tmp_path))
    assert code == 0, err
    # per suite: the markdown, the statistics JSON, then the PNGs in the order the markdown shows them
    # (no CD diagram: neither suite has 2 rows with every task and 5 tasks)
    assert out.split() == [str(tmp_path / name) for name in
                           ("fgvc.md", "fgvc_stats.json", "fgvc_params.png", "fgvc_throughput.png", "fgvc_memory.png",
                            "vtab1k.md", "vtab1k_stats.json", "vtab1k_params.png", "vtab1k_throughput.png",
                            "vtab1k_memory.png")]


def test_statistics_say_why_they_are_omitted(store, tiny, capsys, tmp_path):
    """Issue 15: no p-values without 2 rows sharing every task and 5 tasks; the section says why."""
    import json

    md = render(capsys, store, tmp_path / "vtab", "vtab1k")
    assert ("Statistics omitted: 1 row(s) have a final run for every one of the 19 tasks; ranks and tests need "
            "at least 2.") in md
    assert "Not compared (no final run for every task shown): adapter, lora, rlrr, ssf, vpt (mode=shallow)." in md
    js = json.loads((tmp_path / "vtab" / "vtab1k_stats.json").read_text())
    assert js["omitted"].startswith("1 row(s)") and js["friedman_p"] is None and js["pairwise"] == []
    assert js["average_rank"] == {} and js["rows"] == ["full"] and "rlrr" in js["mean_ci95"]
    md = render(capsys, store, tmp_path / "tiny", "tiny")
    assert ("Tests omitted: the compared rows share 4 task(s); tests over tasks need at least 5 (a Wilcoxon "
            "test over 4 tasks cannot reach p < 0.125).") in md
    assert "p (Holm)" not in md and "Friedman" not in md and "_cd.png" not in md


def test_ppt_matches_v_petl_bench():
    # V-PETL Bench: LoRA, 72.3 % at 0.29 M parameters -> 0.71
    got = report.ppt(pd.Series([72.3]), pd.Series([0.29e6]))[0]
    assert got == pytest.approx(0.723 * math.exp(-math.log10(1.029)))
    assert round(got, 2) == 0.71


def one_line_error(capsys, *argv) -> str:
    code, out, err = bench_report(capsys, *argv)
    assert code == 2 and out == ""
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_unknown_suite_is_one_line(store, capsys, tmp_path):
    err = one_line_error(capsys, "--suite", "nope", "--tracking-uri", store, "--out", str(tmp_path))
    assert "unknown suite 'nope'" in err


def test_suite_without_runs_is_one_line(empty_store, capsys, tmp_path):
    err = one_line_error(capsys, "--suite", "fgvc", "--tracking-uri", empty_store, "--out", str(tmp_path))
    assert "no finished final runs of suite fgvc" in err
    assert not list(tmp_path.iterdir())


def test_empty_store_is_one_line(empty_store, capsys, tmp_path):
    err = one_line_error(capsys, "--tracking-uri", empty_store, "--out", str(tmp_path))
    assert "no finished final runs of any suite" in err


def test_missing_store_is_one_line_and_not_created(capsys, tmp_path):
    db = tmp_path / "nothing" / "mlflow.db"
    err = one_line_error(capsys, "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path))
    assert "no MLflow store at" in err
    assert not db.parent.exists()


def test_unreadable_store_is_one_line(capsys, tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_text("not a database")
    err = one_line_error(capsys, "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "out"))
    assert "cannot read MLflow store" in err


# --------------------------------------------------------------------------- issue 11: trust

def _identity(epochs=4, weights="a" * 64, data=None, **extra):
    """A run's experiment fields (and its data hash) as ``log_run`` takes them in ``params``."""
    return {**_identity_fields(epochs, weights), "data_sha256": data or "d" * 64, **extra}


@pytest.fixture
def mixed_store(tmp_path):
    """lora's main experiment (2 seeds per task) and, on the same tasks and seeds, runs that must
    never join its cells: a later --epochs 1 smoke run, a --hparam lora.rank=4 variant, other
    weights, other data, a randomly initialised backbone."""
    import json

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tracking.experiment_name("tiny"))
    for task in ("digits", "count"):
        for seed, acc in ((1, 80.0), (2, 82.0)):
            log_run(client, exp, "lora", task, seed, acc, params_backbone=100, params=_identity())
            log_run(client, exp, "full", task, seed, 70.0, params_backbone=1000, params=_identity())
    log_run(client, exp, "lora", "digits", 1, 10.0, params_backbone=100, params=_identity(epochs=1))
    log_run(client, exp, "lora", "digits", 1, 20.0, params_backbone=50, params=_identity(fixed=(("rank", 4),)))
    log_run(client, exp, "lora", "digits", 2, 30.0, params_backbone=100, params=_identity(weights="b" * 64))
    log_run(client, exp, "lora", "count", 2, 40.0, params_backbone=100, params=_identity(data="e" * 64))
    log_run(client, exp, "lora", "count", 1, 5.0, params_backbone=100, params=_identity(weights="none"))
    return uri


def test_cells_never_mix_experiments(mixed_store, tiny, capsys, tmp_path):
    rows = first_table(render(capsys, mixed_store, tmp_path, "tiny"))
    assert rows["lora"]["digits"] == "**81.0 ± 1.4**" and rows["lora"]["count"] == "**81.0 ± 1.4**"
    assert rows["lora (epochs=1) ‡"]["digits"] == "10.0"
    assert rows["lora (rank=4) ‡"]["digits"] == "20.0"
    assert rows["lora (weights=bbbbbbbb) ‡"]["digits"] == "30.0"
    assert rows["lora (data=eeeeeeee) ‡"]["count"] == "40.0"
    assert rows["lora (random init) ‡"]["count"] == "5.0"
    assert rows["full"]["digits"] == "70.0 ± 0.0"


def test_a_randomly_initialised_backbone_is_always_marked(tmp_path, tiny, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tracking.experiment_name("tiny"))
    for task in ("digits", "count"):
        log_run(client, exp, "full", task, 1, 50.0, params_backbone=10, params=_identity(weights="none"))
    md = render(capsys, uri, tmp_path / "out", "tiny")
    assert "full (random init)" in first_table(md)
    assert "(random init): a randomly initialised backbone" in md


def test_failed_seeds_are_listed_and_the_mean_is_not_ranked(tmp_path, tiny, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tracking.experiment_name("tiny"))
    for task in ("digits", "count"):
        log_run(client, exp, "lora", task, 1, 90.0, params_backbone=10)
        log_run(client, exp, "full", task, 1, 50.0, params_backbone=100)
        log_run(client, exp, "full", task, 2, 52.0, params_backbone=100)
    run = log_run(client, exp, "lora", "count", 2, 99.9, params_backbone=10, status="RUNNING")
    client.set_tag(run, "failure_reason", "Diverged: loss is nan at epoch 3, step 40")
    client.set_terminated(run, "FAILED")
    # a failed seed that was redone later does not count as failed
    log_run(client, exp, "full", "count", 3, 0.0, params_backbone=100, status="FAILED")
    log_run(client, exp, "full", "count", 3, 54.0, params_backbone=100)
    md = render(capsys, uri, tmp_path / "out", "tiny")
    rows = first_table(md)
    assert rows["lora"]["count"] == "**90.0** §"
    assert rows["lora"]["Mean (2 tasks)"] == "90.0"  # better than full's, but over fewer seeds: not bold
    assert rows["full"]["Mean (2 tasks)"] == "**51.5**"
    assert ("§ lora/count: 1 seed(s) failed and not redone: seed 2 (Diverged: loss is nan at epoch 3, "
            "step 40); the cell is over the seeds that finished.") in md
    assert "full/count" not in md and "99.9" not in md


def test_stale_against_the_checkout_not_the_newest_run(store, tiny, capsys, tmp_path, monkeypatch):
    """A suite whose every run predates a method fix is stale as a whole."""
    monkeypatch.setattr(tracking, "git_commit", lambda: "fix999")
    md = render(capsys, store, tmp_path, "tiny")
    assert "Current commit: fix999." in md
    assert first_table(md)["lora ‡"]["digits"] == "**92.0 ± 1.4** †"
    assert "(abc123) than the current commit fix999 (the checkout rendering this report)" in md


def test_linear_probe_throughput_is_never_bold(store, tiny, capsys, tmp_path):
    rows = first_table(render(capsys, store, tmp_path, "tiny"))
    assert rows["linear"]["Train img/s"] == "400.0"  # the highest, on cached features: not ranked
    assert rows["lora ‡"]["Train img/s"] == "**150.0**"


def test_sequential_adapter_compares_with_noahs_adapter_row(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tracking.experiment_name("vtab1k"))
    log_run(client, exp, "adapter", "cifar", 1, 70.0, params_backbone=156_768, mode="sequential")
    md = render(capsys, uri, tmp_path / "out", "vtab1k")
    assert first_table(md)["adapter (mode=sequential)"]["paper"] == "71.4"
    assert "adapter (mode=sequential) → adapter_noah" in md


def test_variant_methods_and_their_default_modes_come_from_the_registry():
    assert report.DEFAULT_MODE == {"adapter": "parallel", "convpass": "block", "repadapter": "block", "vpt": "deep"}


# --------------------------------------------------------------------------- issue 14: backbones

def _on(backbone):
    return {"backbone": backbone, "weights_sha256": RELEASE if backbone == "vit_base_patch16_224" else "l" * 64}


def test_other_weights_get_a_note_instead_of_the_paper_column(tmp_path, capsys):
    """Issue 25: on the suite's own backbone, only runs on the published rows' weights file (its
    SHA-256 in the catalog) get the paper column and Δ; a row on other weights gets a note."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tracking.experiment_name("vtab1k"))
    for seed in (1, 2, 3):  # most runs: the release, the board's main weights
        log_run(client, exp, "lora", "cifar", seed, 70.0, params_backbone=294_912)
    for seed in (1, 2):
        log_run(client, exp, "full", "cifar", seed, 60.0, params_backbone=85_798_656,
                params={"weights_sha256": "c" * 64})
    md = render(capsys, uri, tmp_path / "out", "vtab1k")
    rows = first_table(md)
    assert rows["lora"]["paper"] == "72.3" and rows["lora"]["Δ"] == "**+2.9**"
    assert rows["full (weights=cccccccc)"]["paper"] == "-" and rows["full (weights=cccccccc)"]["Δ"] == "-"
    assert ("No paper column or Δ for full (weights=cccccccc): the published rows were measured with the "
            "original ImageNet-21k release (ViT-B_16.npz); these runs used other weights") in md


def test_each_backbone_gets_its_own_leaderboard_and_only_the_suites_is_compared(tmp_path, capsys):
    """The same method on ViT-B/16 (the published rows' backbone) and on ViT-L/16: two
    leaderboards, no row mixing them, and no Δ of a ViT-L row against the ViT-B numbers."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tracking.experiment_name("vtab1k"))
    for backbone, acc in (("vit_base_patch16_224", 70.0), ("vit_large_patch16_224", 90.0)):
        for seed in (1, 2):
            log_run(client, exp, "lora", "cifar", seed, acc, params_backbone=294_912, params=_on(backbone))
    log_run(client, exp, "rlrr", "cifar", 1, 95.0, params_backbone=765_952, params=_on("vit_large_patch16_224"))
    md = render(capsys, uri, tmp_path / "out", "vtab1k")
    base, large = md.split("## Backbone `vit_large_patch16_224`")
    assert "## Backbone `vit_base_patch16_224` (the published rows' backbone)" in base
    assert "on 2 backbones: one leaderboard per backbone" in base
    base_rows, large_rows = first_table(base), first_table(large)
    assert set(base_rows) == {"lora"} and set(large_rows) == {"lora", "rlrr"}
    assert base_rows["lora"]["cifar"] == "**70.0 ± 0.0**" and large_rows["lora"]["cifar"] == "90.0 ± 0.0"
    assert base_rows["lora"]["paper"] == "72.3" and base_rows["lora"]["Δ"] == "**+2.9**"  # 70.0 - 67.1
    assert "paper" not in large_rows["lora"] and "Δ" not in large_rows["rlrr"]
    assert ("No paper column: the published rows of VTAB-1k were measured on vit_base_patch16_224; results on "
            "vit_large_patch16_224 are never compared with them.") in large
    assert large_rows["rlrr"]["cifar"] == "**95.0**"  # bold within its own backbone only
    assert md.count("## Published reference") == 1
    # statistics per backbone: a section under each leaderboard; the JSON keys the others by backbone
    import json

    assert md.count("### Statistics: which differences are real") == 2
    js = json.loads((tmp_path / "out" / "vtab1k_stats.json").read_text())
    assert js["backbone"] == "vit_base_patch16_224" and js["rows"] == ["lora"]
    assert set(js["other_backbones"]) == {"vit_large_patch16_224"}
    assert js["other_backbones"]["vit_large_patch16_224"]["average_rank"] == {"rlrr": 1.0, "lora": 2.0}
    # the trade-off plots name rows of the other backbone as the summary does
    assert "Pareto front, accuracy vs trainable parameters on `vit_large_patch16_224`: lora [vit_large_patch16_224]" in md


def test_a_store_of_another_backbone_only_has_no_paper_column(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tracking.experiment_name("vtab1k"))
    log_run(client, exp, "lora", "cifar", 1, 80.0, params_backbone=294_912, params=_on("vit_base_patch14_dinov2"))
    md = render(capsys, uri, tmp_path / "out", "vtab1k")
    assert "finished final runs on backbone `vit_base_patch14_dinov2`" in md
    assert "paper" not in first_table(md)["lora"] and "Δ" not in first_table(md)["lora"]
    assert "results on vit_base_patch14_dinov2 are never compared with them" in md


@pytest.mark.parametrize("method, row", [("bitfit", "bias"), ("fact_tt", "fact_tt"), ("fact_tk", "fact_tk"),
                                         ("convpass", "convpass"), ("repadapter", "repadapter"),
                                         ("gps", "gps"), ("dtl", "dtl")])
def test_new_methods_compare_with_their_published_rows(tmp_path, capsys, method, row):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tracking.experiment_name("vtab1k"))
    mode = {"mode": "block"} if method in ("convpass", "repadapter") else {}  # as their runs log it
    log_run(client, exp, method, "cifar", 1, 70.0, params_backbone=1000, **mode)
    md = render(capsys, uri, tmp_path / "out", "vtab1k")
    expected = report.load_reference("vtab1k").at[row, "mean"]
    assert first_table(md)[method]["paper"] == report.fmt(float(expected), 1)
    assert f"{method} → {row}" in md


@pytest.mark.parametrize("method", ["convpass", "repadapter"])
def test_attention_only_modes_have_no_published_row(tmp_path, capsys, method):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tracking.experiment_name("vtab1k"))
    log_run(client, exp, method, "cifar", 1, 70.0, params_backbone=1000, mode="attn")
    md = render(capsys, uri, tmp_path / "out", "vtab1k")
    assert first_table(md)[f"{method} (mode=attn)"]["paper"] == "-"
