"""Issue 15, which differences are real: the statistics of `bench report` and `bench compare` on a
synthetic VTAB-1k MLflow store written through the runner's own tracking code, and the pure
functions of bench/stats.py and bench/tradeoff.py on examples worked by hand."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import catalog, cli, stats, tracking, tradeoff

VTAB = catalog.load_suite("vtab1k")
SEEDS = (1, 2, 3, 4, 5)
PROTOCOL = {"suite": "vtab1k", "epochs": 100, "warmup_epochs": 10, "batch_size": 64, "trials": 20}
WEIGHTS = "a" * 64
PARAMS = {"lora": 294_912, "bitfit": 102_528, "ia3": 55_296}


def log_final(client, exp_id, method, task, seed, acc, *, params_backbone=100_000, img_s=500.0, mem=4000.0,
              commit="abc123", fixed=None):
    """One final fit as ``Runner.final`` logs it: its tags (``Runner._tags`` + run_key), its params
    (hyperparameters, provenance, protocol), its end-of-run metrics, through ``tracking.TrackedRun``."""
    t = VTAB.tasks[task]
    experiment = {**PROTOCOL, "backbone": VTAB.backbone, "weights_sha256": WEIGHTS, "fixed": fixed or {}}
    tags = {"phase": tracking.PHASE_FINAL, "suite": "vtab1k", "method": method, "task": task, "group": t.group,
            "seed": seed, "git_commit": commit, "owner": "test:1",
            tracking.EXPERIMENT_TAG: json.dumps(experiment, sort_keys=True),
            "run_key": f"{method}-{task}-{seed}", "best_params_from": "trial 0"}
    params = {"lr": 1e-3, "weight_decay": 1e-4, **(fixed or {}), "drop_path_rate": 0.0, "backbone": VTAB.backbone,
              "weights_file": "w.npz", "weights_sha256": WEIGHTS, "git_commit": commit, "device": "cpu",
              "method": method, "task": task, "seed": seed, "data_sha256": "d" * 64, **PROTOCOL}
    with tracking.TrackedRun(client, exp_id, f"{method}/{task} seed {seed}", tags, params) as run:
        run.log_metrics({tracking.TEST_ACC: acc, tracking.PARAMS_BACKBONE: params_backbone,
                         tracking.PARAMS_TOTAL: params_backbone + 769 * t.num_classes,
                         tracking.TRAIN_IMG_PER_S: img_s, tracking.PEAK_MEM_MB: mem, tracking.WALL_S: 10.0})


def synthetic_accuracies(seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """{method: {task: [acc per seed]}}: bitfit (B) at a per-task level with seed noise (sd 0.5);
    lora (A) 2-3 points above B on every task; ia3 (C) B's runs plus noise (sd 0.5)."""
    rng = np.random.default_rng(seed)
    out = {"lora": {}, "bitfit": {}, "ia3": {}}
    for task in VTAB.tasks:
        level, gain = rng.uniform(30, 90), rng.uniform(2, 3)
        b = level + rng.normal(0, 0.5, len(SEEDS))
        out["bitfit"][task] = list(b)
        out["lora"][task] = list(level + gain + rng.normal(0, 0.5, len(SEEDS)))
        out["ia3"][task] = list(b + rng.normal(0, 0.5, len(SEEDS)))
    return out


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """A folder for a SQLite store of many runs: on tmpfs where there is one (285 runs are over a
    thousand commits, 4x faster without syncing each to disk), removed afterwards."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path_factory.mktemp("vtab_stats")
        return
    folder = Path(tempfile.mkdtemp(prefix="peft_bench_test_stats_", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def vtab_store(store_dir):
    """19 VTAB-1k tasks x 5 seeds x 3 methods = 285 final runs."""
    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    client = tracking.connect(uri)
    exp_id = tracking.experiment_id(client, "vtab1k")
    for method, table in synthetic_accuracies().items():
        for task, accs in table.items():
            for seed, acc in zip(SEEDS, accs):
                log_final(client, exp_id, method, task, seed, float(acc), params_backbone=PARAMS[method],
                          img_s={"lora": 400.0, "bitfit": 600.0, "ia3": 650.0}[method])
    return uri


@pytest.fixture(scope="module")
def vtab_report(vtab_store, tmp_path_factory):
    """`bench report` of the synthetic store, rendered twice into two folders."""
    outs = [tmp_path_factory.mktemp(f"vtab_report_{i}") for i in (1, 2)]
    for out in outs:
        assert cli.main(["report", "--suite", "vtab1k", "--tracking-uri", vtab_store, "--out", str(out)]) == 0
    return outs


@pytest.fixture(autouse=True)
def no_checkout(monkeypatch):
    monkeypatch.setattr(tracking, "git_commit", lambda: "unknown")


def pair_of(js: dict, a: str, b: str) -> dict:
    (p,) = [p for p in js["pairwise"] if {p["a"], p["b"]} == {a, b}]
    return p


def test_a_clear_winner_is_significant_and_ranked_first(vtab_report):
    js = json.loads((vtab_report[0] / "vtab1k_stats.json").read_text())
    assert js["suite"] == "vtab1k" and js["tasks"] == list(VTAB.tasks) and len(js["tasks"]) == 19
    assert js["average_rank"]["lora"] == 1.0 and js["rows"][0] == "lora"
    assert js["friedman_p"] < 0.05
    ab = pair_of(js, "lora", "bitfit")
    assert (ab["a"], ab["b"]) == ("lora", "bitfit")  # A is the better-ranked row
    assert ab["wins"] == 19 and ab["losses"] == 0
    assert 2 <= ab["mean_diff"] <= 3 and 0 < ab["ci95"][0] < ab["mean_diff"] < ab["ci95"][1]
    # every task won: the exact two-sided Wilcoxon p is 2 / 2^19, Holm over 3 pairs multiplies it by 3
    assert ab["p"] == pytest.approx(2 / 2 ** 19, rel=1e-5)
    assert ab["p_holm"] == pytest.approx(3 * 2 / 2 ** 19, rel=1e-5) and ab["p_holm"] < 0.05
    # the suite means' CIs (seeds only) do not overlap
    assert js["mean_ci95"]["lora"][0] > js["mean_ci95"]["bitfit"][1]


def test_noise_is_no_difference(vtab_report):
    js = json.loads((vtab_report[0] / "vtab1k_stats.json").read_text())
    bc = pair_of(js, "bitfit", "ia3")
    assert bc["p_holm"] >= 0.05
    assert bc["ci95"][0] < 0 < bc["ci95"][1]
    assert abs(bc["mean_diff"]) < 0.5
    md = (vtab_report[0] / "vtab1k.md").read_text()
    assert "2 of 3 pairs differ significantly" in md


def test_the_markdown_shows_ranks_cis_tests_and_the_diagram(vtab_report):
    md = (vtab_report[0] / "vtab1k.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert "| Mean (19 tasks)   | 95% CI       | Avg rank   |" in header
    row = next(line for line in md.splitlines() if line.startswith("| lora "))
    assert "| **1.00**   |" in row
    assert "## Statistics: which differences are real" in md
    assert "Friedman test over 3 rows × 19 tasks" in md
    assert "| lora | bitfit |" in md and "| 19/0/0 " in md
    assert "![Critical difference diagram](vtab1k_cd.png)" in md
    assert (vtab_report[0] / "vtab1k_cd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ia3 has the fewest parameters, lora the highest mean; bitfit (in between) is on the front only
    # when its mean beats ia3's, which is B's versus B-plus-noise: whatever this draw gave
    means = {m: np.mean([np.mean(a) for a in table.values()]) for m, table in synthetic_accuracies().items()}
    front = ["ia3", "bitfit", "lora"] if means["bitfit"] > means["ia3"] else ["ia3", "lora"]
    assert f"Pareto front, accuracy vs trainable parameters: {', '.join(front)}." in md
    assert "Tuning analysis omitted: no Optuna storage found beside the MLflow store" in md


def test_stats_json_schema(vtab_report):
    js = json.loads((vtab_report[0] / "vtab1k_stats.json").read_text())
    assert set(js) == {"suite", "backbone", "tasks", "rows", "left_out", "omitted", "average_rank", "friedman_p",
                       "pairwise", "mean_ci95"}
    assert js["backbone"] == VTAB.backbone and js["omitted"] is None and js["left_out"] == []
    assert set(js["average_rank"]) == set(js["mean_ci95"]) == {"lora", "bitfit", "ia3"}
    assert all(isinstance(v, float) for v in js["average_rank"].values())
    assert len(js["pairwise"]) == 3
    for p in js["pairwise"]:
        assert set(p) == {"a", "b", "mean_diff", "ci95", "p", "p_holm", "wins", "ties", "losses"}
        assert isinstance(p["mean_diff"], float) and len(p["ci95"]) == 2 and p["ci95"][0] <= p["ci95"][1]
        assert 0 <= p["p"] <= p["p_holm"] <= 1
        assert p["wins"] + p["ties"] + p["losses"] == 19
    for lo, hi in js["mean_ci95"].values():
        assert lo <= hi


def test_rerun_is_byte_identical(vtab_report):
    first, second = vtab_report
    names = sorted(p.name for p in first.iterdir())
    assert names == ["vtab1k.md", "vtab1k_cd.png", "vtab1k_memory.png", "vtab1k_params.png", "vtab1k_stats.json",
                     "vtab1k_throughput.png"]
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_compare_verdicts(vtab_store, capsys):
    assert cli.main(["compare", "lora", "bitfit", "--suite", "vtab1k", "--tracking-uri", vtab_store]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "lora > bitfit, p = 3.8e-06, 19/19 tasks"
    assert any(line.startswith("Mean difference (lora − bitfit): +2.") for line in out)
    assert "Wins/ties/losses of lora: 19/0/0 (ties: equal at 1 decimal)" in out
    # the other way round: the same test, the verdict names the better row first
    assert cli.main(["compare", "bitfit", "lora", "--tracking-uri", vtab_store]) == 0  # the only suite with runs
    assert capsys.readouterr().out.splitlines()[-1] == "lora > bitfit, p = 3.8e-06, 19/19 tasks"
    assert cli.main(["compare", "bitfit", "ia3", "--suite", "vtab1k", "--tracking-uri", vtab_store]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("no significant difference between bitfit and ia3: p = ")


# --------------------------------------------------------------------------- pure functions

def test_average_ranks_average_ties():
    m = pd.DataFrame({"t1": [90.0, 80.0, 80.0], "t2": [70.0, 75.0, 60.0]}, index=["a", "b", "c"])
    ranks = stats.average_ranks(m)
    # t1: a 1, b and c share ranks 2 and 3 -> 2.5 each; t2: b 1, a 2, c 3
    assert ranks.to_dict() == {"a": 1.5, "b": 1.75, "c": 2.75}
    assert stats.rank_order(ranks) == ["a", "b", "c"]


def test_holm_and_the_wilcoxon_floor():
    # Holm: sorted p 0.01, 0.02, 0.03 -> 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 0.03); back in input order
    assert stats.holm([0.03, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert stats.wilcoxon_p(np.array([3.0, 4, 5, 6, 7, 8]), np.zeros(6)) == pytest.approx(2 / 64)
    assert stats.min_wilcoxon_p(6) == 2 / 64
    assert stats.wilcoxon_p(np.ones(6), np.ones(6)) == 1.0  # no difference at all


def test_omitted_with_one_row_or_four_tasks():
    runs = pd.DataFrame([{"label": m, "task": t, "seed": s, "test_acc": 50.0 + s}
                         for m in ("a", "b") for t in ("t1", "t2", "t3", "t4") for s in (1, 2)])
    four = stats.analyse(runs, ["t1", "t2", "t3", "t4"], n_boot=200)
    assert four.average_rank == {"a": 1.5, "b": 1.5} and not four.pairs
    assert four.omitted.startswith("the compared rows share 4 task(s); tests over tasks need at least 5")
    one = stats.analyse(runs[runs["label"] == "a"], ["t1", "t2", "t3", "t4"], n_boot=200)
    assert one.omitted.startswith("1 row(s) have a final run for every one of the 4 tasks")
    js = stats.to_json(one)
    assert js["friedman_p"] is None and js["pairwise"] == [] and js["average_rank"] == {}


def test_bootstrap_cis_are_seeded_and_local():
    """A row's CI depends on its own runs only: adding a row changes no other row's CI."""
    rng = np.random.default_rng(1)
    rows = [{"label": m, "task": f"t{t}", "seed": s, "test_acc": float(rng.normal(60, 2))}
            for m in ("a", "b", "c") for t in range(5) for s in range(3)]
    runs = pd.DataFrame(rows)
    tasks = [f"t{t}" for t in range(5)]
    full = stats.analyse(runs, tasks, n_boot=500)
    again = stats.analyse(runs.sample(frac=1, random_state=3), tasks, n_boot=500)  # row order never matters
    fewer = stats.analyse(runs[runs["label"] != "c"], tasks, n_boot=500)
    assert full.mean_ci95 == again.mean_ci95
    assert fewer.mean_ci95["a"] == full.mean_ci95["a"]
    lo, hi = full.mean_ci95["a"]
    assert lo < runs[runs["label"] == "a"]["test_acc"].mean() < hi


def test_pareto_front_exact():
    # x = cost (lower is better), y = accuracy. d is dominated by b (cheaper and better); e ties c
    # exactly (both on the front); f is cheaper than all but worst (on it); g costs more for the same
    # accuracy as b (dominated).
    pts = pd.DataFrame({"x": [1.0, 2.0, 4.0, 3.0, 4.0, 0.5, 3.0],
                        "y": [50.0, 60.0, 70.0, 55.0, 70.0, 10.0, 60.0]}, index=list("abcdefg"))
    assert tradeoff.pareto_front(pts, "x", "y") == ["f", "a", "b", "c", "e"]
    # higher x better (throughput): the front sorted best x first
    assert tradeoff.pareto_front(pts, "x", "y", x_better="max") == ["c", "e"]


def test_tradeoff_fronts_skip_unranked_rows_and_the_linear_probe():
    summary = pd.DataFrame({
        "mean_tasks": [70.0, 60.0, 80.0, 50.0], "complete": [True, True, False, True],
        "ranked": [True, True, False, True], tracking.PARAMS_TOTAL: [1e6, 1e4, 1e3, 1e3],
        tracking.PARAMS_BACKBONE: [1e6, 1e4, 1e3, 0.0], tracking.TRAIN_IMG_PER_S: [100.0, 200.0, 300.0, 5000.0],
        tracking.PEAK_MEM_MB: [float("nan")] * 4, "backbone": ["b"] * 4}, index=["full", "lora", "partial", "linear"])
    params, throughput, _ = tradeoff.AXES
    assert tradeoff.fronts(summary, params) == {"b": ["linear", "lora", "full"]}  # partial: not ranked
    assert tradeoff.fronts(summary, throughput) == {"b": ["lora", "full"]}  # linear: cached features
    lines, pngs = tradeoff.section(summary, "s", "S")
    assert sorted(pngs) == ["s_params.png", "s_throughput.png"]
    assert "- No peak training memory plot: no final run recorded it (peak memory is measured on GPU only)." in lines


CD_SCRIPT = """
import hashlib
from bench import stats, stats_report
rows = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
s = stats.SuiteStats([f"t{i}" for i in range(6)], rows, [], {r: i + 1.0 for i, r in enumerate(rows)}, {})
s.pairs = [stats.Pair(a, b, s.tasks, 1.0, (0.0, 2.0), 0.01, 6, 0, 0, 0.5 if j - i <= 2 else 0.01)
           for i, a in enumerate(rows) for j, b in enumerate(rows) if i < j]
print(hashlib.sha256(stats_report.cd_png(s, "T")).hexdigest())
"""


def test_cd_diagram_bytes_do_not_depend_on_the_hash_seed():
    """The library draws each bar through a set of rows; the report sorts its points, so that a
    rerun in another process (another string hash seed) gives the same PNG."""
    import subprocess
    import sys

    digests = {subprocess.run([sys.executable, "-c", CD_SCRIPT], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(digests) == 1
