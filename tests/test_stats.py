"""Issue 15, which differences are real: the statistics of `bench report` and `bench compare` on a
synthetic VTAB-1k MLflow store written through the runner's own tracking code, and the pure
functions of bench/report/stats.py and bench/report/tradeoff.py on examples worked by hand. Issue
25: the direction of a pair from its signed ranks, zero differences split, the interval over seeds,
rows with failed seeds left out of the tests, and a diagram caption that lists its bars."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import scipy.stats
from statsmodels.stats.multitest import multipletests

from bench import catalog, cli, tracking
from bench.identity import Experiment
from bench.report import stats, stats_section, tradeoff
from bench.report.format import fmt_p
from bench.report.stats_json import to_json

VTAB = catalog.load_suite("vtab1k")
SEEDS = (1, 2, 3, 4, 5)
PROTOCOL = {"suite": "vtab1k", "epochs": 100, "warmup_epochs": 10, "batch_size": 64, "trials": 20}
WEIGHTS = "a" * 64
PARAMS = {"lora": 294_912, "bitfit": 102_528, "ia3": 55_296}


def log_final(client, exp_id, method, task, seed, acc, *, params_backbone=100_000, img_s=500.0, mem=4000.0,
              commit="abc123", fixed=None, failed=False):
    """One final fit as ``Runner.final`` logs it: its tags (``Runner._tags`` + run_key), its params
    (hyperparameters, provenance, protocol), its end-of-run metrics, through ``tracking.TrackedRun``.
    ``failed``: the fit raises (diverged) before logging metrics, so the run ends FAILED."""
    t = VTAB.tasks[task]
    experiment = Experiment(**PROTOCOL, backbone=VTAB.backbone, weights_sha256=WEIGHTS, method=method,
                            fixed=tuple((fixed or {}).items()), drop_path_rate=0.0)
    tags = {"phase": tracking.PHASE_FINAL, "suite": "vtab1k", "method": method, "task": task, "group": t.group,
            "seed": seed, "git_commit": commit, "owner": "test:1",
            tracking.EXPERIMENT_TAG: experiment.to_json(),
            "run_key": f"{method}-{task}-{seed}", "best_params_from": "trial 0"}
    params = {"lr": 1e-3, "weight_decay": 1e-4, **(fixed or {}), "drop_path_rate": 0.0, "backbone": VTAB.backbone,
              "weights_file": "w.npz", "weights_sha256": WEIGHTS, "git_commit": commit, "device": "cpu",
              "method": method, "task": task, "seed": seed, "data_sha256": "d" * 64, **PROTOCOL}
    with contextlib.suppress(FloatingPointError), \
            tracking.TrackedRun(client, exp_id, f"{method}/{task} seed {seed}", tags, params) as run:
        if failed:
            raise FloatingPointError("loss is nan")
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
    # the suite means' CIs over seeds do not overlap
    assert js["mean_ci95"]["lora"][0] > js["mean_ci95"]["bitfit"][1]
    # no zero difference, W+ = 1 + ... + 19 = 190: the ranks favour lora, and so does the mean
    assert (ab["w_plus"], ab["w_minus"], ab["favours"]) == (190.0, 0.0, "lora")


def test_the_interval_over_seeds_is_a_t_interval(vtab_report):
    """Per seed, the row's mean over the 19 tasks; the 95% t-interval of those 5 means (df 4),
    computed here with scipy from the accuracies the store was written with."""
    js = json.loads((vtab_report[0] / "vtab1k_stats.json").read_text())
    for method, table in synthetic_accuracies().items():
        per_seed = np.array([table[t] for t in VTAB.tasks]).mean(axis=0)  # 5 seeds
        assert per_seed.mean() == pytest.approx(np.mean([np.mean(a) for a in table.values()]))  # = Mean
        lo, hi = scipy.stats.t.interval(0.95, len(SEEDS) - 1, loc=per_seed.mean(),
                                        scale=per_seed.std(ddof=1) / np.sqrt(len(SEEDS)))
        assert js["mean_ci95"][method] == pytest.approx([lo, hi], abs=1.5e-6)
        assert js["mean_ci95_seeds"][method] == 5
    md = (vtab_report[0] / "vtab1k.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| lora "))
    lo, hi = js["mean_ci95"]["lora"]
    assert f"| [{lo:.1f}, {hi:.1f}] " in row
    assert "- 95% CI (seeds): an interval over seeds for Mean (19 tasks): per seed, the row's mean over its tasks" in md


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
    assert "| Mean (19 tasks)   | 95% CI (seeds)   | Avg rank   |" in header
    row = next(line for line in md.splitlines() if line.startswith("| lora "))
    assert "| **1.00**   |" in row
    assert "## Statistics: which differences are real" in md
    assert "Friedman test over 3 rows × 19 tasks" in md
    assert "| lora | bitfit |" in md and "| 19/0/0 " in md
    assert "| lora (190 / 0) " in md  # the row the signed ranks favour, W+ / W−
    assert "zero differences split between the signs (zsplit, Demšar 2006)" in md
    assert "![Critical difference diagram](vtab1k_cd.png)" in md
    # bitfit and ia3 (noise) are the one bar; lora differs from both
    assert "- Critical difference diagram:" in md and "The bars, best-ranked first:\n  - " in md
    assert (vtab_report[0] / "vtab1k_cd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ia3 has the fewest parameters, lora the highest mean; bitfit (in between) is on the front only
    # when its mean beats ia3's, which is B's versus B-plus-noise: whatever this draw gave
    means = {m: np.mean([np.mean(a) for a in table.values()]) for m, table in synthetic_accuracies().items()}
    front = ["ia3", "bitfit", "lora"] if means["bitfit"] > means["ia3"] else ["ia3", "lora"]
    assert f"Pareto front, accuracy vs trainable parameters: {', '.join(front)}." in md
    assert "Tuning analysis omitted: no Optuna storage found beside the MLflow store" in md


def test_stats_json_schema(vtab_report):
    js = json.loads((vtab_report[0] / "vtab1k_stats.json").read_text())
    assert set(js) == {"suite", "backbone", "tasks", "rows", "left_out", "failed_seeds", "omitted", "average_rank",
                       "friedman_p", "pairwise", "cliques", "mean_ci95", "mean_ci95_seeds"}
    assert js["backbone"] == VTAB.backbone and js["omitted"] is None and js["left_out"] == []
    assert js["failed_seeds"] == []
    assert set(js["average_rank"]) == set(js["mean_ci95"]) == {"lora", "bitfit", "ia3"}
    assert all(isinstance(v, float) for v in js["average_rank"].values())
    assert len(js["pairwise"]) == 3
    for p in js["pairwise"]:
        assert set(p) == {"a", "b", "mean_diff", "ci95", "p", "p_holm", "w_plus", "w_minus", "favours", "wins",
                          "ties", "losses"}
        assert p["w_plus"] + p["w_minus"] == 19 * 20 / 2
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


def test_compare_verdicts(vtab_store, vtab_report, capsys):
    # picked from the leaderboard: Holm over its 3 pairs, 3 x 2 / 2^19 (the report's p (Holm))
    assert cli.main(["compare", "lora", "bitfit", "--suite", "vtab1k", "--tracking-uri", vtab_store]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "lora > bitfit, p (Holm) = 1.1e-05, 19/19 tasks"
    assert any(line.startswith("Mean difference (lora − bitfit): +2.") for line in out)
    assert "Wins/ties/losses of lora: 19/0/0 (ties: equal at 1 decimal)" in out
    assert "Wilcoxon signed-rank test over 19 tasks (two-sided, zero differences split): p = 3.8e-06" in out
    assert ("Signed-rank sums: W+ = 190 (tasks where lora is higher), W− = 0 (where bitfit is): the test favours "
            "lora") in out
    assert ("Holm-corrected over the leaderboard's 3 pairs (the p (Holm) the report shows for this pair): "
            "p (Holm) = 1.1e-05. Pass --planned if this one comparison was chosen before seeing the results.") in out
    # planned in advance: its own p
    assert cli.main(["compare", "lora", "bitfit", "--planned", "--tracking-uri", vtab_store]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "lora > bitfit, p = 3.8e-06, 19/19 tasks" and not any("Holm" in line for line in out)
    # the other way round: the same test, the verdict names the better row first
    assert cli.main(["compare", "bitfit", "lora", "--tracking-uri", vtab_store]) == 0  # the only suite with runs
    assert capsys.readouterr().out.splitlines()[-1] == "lora > bitfit, p (Holm) = 1.1e-05, 19/19 tasks"
    # every pair's p (Holm) is the one in the report's JSON
    js = json.loads((vtab_report[0] / "vtab1k_stats.json").read_text())
    for p in js["pairwise"]:
        assert cli.main(["compare", p["a"], p["b"], "--tracking-uri", vtab_store]) == 0
        out = capsys.readouterr().out.splitlines()
        assert f"p (Holm) = {fmt_p(p['p_holm'])}." in next(line for line in out if line.startswith("Holm"))
    assert cli.main(["compare", "bitfit", "ia3", "--suite", "vtab1k", "--tracking-uri", vtab_store]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "no significant difference between bitfit and ia3: p (Holm) = ")


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
    js = to_json(one)
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
from bench.report import stats, stats_section
rows = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
s = stats.SuiteStats([f"t{i}" for i in range(6)], rows, [], {r: i + 1.0 for i, r in enumerate(rows)}, {})
s.pairs = [stats.Pair(a, b, s.tasks, 1.0, (0.0, 2.0), 0.01, 6, 0, 0, 0.5 if j - i <= 2 else 0.01)
           for i, a in enumerate(rows) for j, b in enumerate(rows) if i < j]
print(hashlib.sha256(stats_section.cd_png(s, "T")).hexdigest())
"""


def test_cd_diagram_bytes_do_not_depend_on_the_hash_seed():
    """The library draws each bar through a set of rows; the report sorts its points, so that a
    rerun in another process (another string hash seed) gives the same PNG."""
    import subprocess
    import sys

    digests = {subprocess.run([sys.executable, "-c", CD_SCRIPT], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(digests) == 1


# --------------------------------------------------------------------------- issue 25

def frame(table: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    """{label: {task: [acc per seed]}} as the tidy frame of final runs (seeds 1, 2, ...)."""
    return pd.DataFrame([{"label": label, "task": task, "seed": seed, "test_acc": float(acc)}
                         for label, cells in table.items() for task, accs in cells.items()
                         for seed, acc in enumerate(accs, start=1)])


TASKS19 = [f"t{i:02d}" for i in range(19)]
SKEWED = np.array([0.5] * 17 + [-20.0] * 2)  # A wins 17 tasks by 0.5 and loses 2 by 20


def skewed_runs() -> pd.DataFrame:
    """A and B on 19 tasks (one seed) at per-task levels that are not round numbers, so that the
    differences carry float noise: A - B is SKEWED."""
    levels = 50 + 1.7 * np.arange(19) + 0.1
    return frame({"A": {t: [lv + d] for t, lv, d in zip(TASKS19, levels, SKEWED)},
                  "B": {t: [lv] for t, lv in zip(TASKS19, levels)}})


def test_direction_comes_from_the_signed_ranks_not_the_mean():
    """Issue 25, wrong result 3: the signed-rank test favours A (W+ 153 against W− 37), the mean
    favours B; the verdict used to read 'B > A'."""
    s = stats.analyse(skewed_runs(), TASKS19, n_boot=200)
    (p,) = s.pairs
    assert (p.a, p.b) == ("A", "B") and s.average_rank == pytest.approx({"A": 21 / 19, "B": 36 / 19})
    # (it was 'B > A, p = 0.011, 2/19 tasks')
    assert p.verdict() == ("A > B, p = 0.011, 17/19 tasks; note: the mean difference favours B (A − B = -1.66 "
                           "points), the signed ranks A (rank sums 153 against 37)")
    expected = scipy.stats.wilcoxon(SKEWED, zero_method="zsplit")
    assert p.p == pytest.approx(expected.pvalue, rel=1e-9) and p.p == pytest.approx(0.0106232, rel=1e-5)
    # |d| ranks: the 17 wins share ranks 1..17 (9 each), the losses 18 and 19
    assert (p.w_plus, p.w_minus) == (153.0, 37.0) and min(p.w_plus, p.w_minus) == expected.statistic
    assert p.mean_diff == pytest.approx((17 * 0.5 - 40) / 19) and p.mean_diff < 0
    assert p.favours == "A" and p.mean_disagrees and (p.wins, p.ties, p.losses) == (17, 0, 2)
    assert p.verdict(p.p_holm, "p (Holm)").startswith("A > B, p (Holm) = 0.011, 17/19 tasks; note: ")
    # the same pair the other way round: the same winner, W+ and W− swapped
    means = stats.cell_means(skewed_runs())
    q = stats.pair(stats.Bootstrap(skewed_runs(), 200), means, "B", "A")
    assert (q.w_plus, q.w_minus, q.favours) == (37.0, 153.0, "A") and q.p == p.p
    assert q.verdict() == p.verdict()
    # not significant: no direction claimed, whatever the ranks
    assert p.verdict(0.2) == "no significant difference between A and B: p = 0.200, A better on 17/19 tasks"
    # the table says it too: the ranks' favourite, its sums, and ¶ where the mean disagrees
    lines = stats_section.section(s, None)
    assert "| A   | B   | -1.66               |" in stats_section.pair_rows(s.pairs)
    assert "| A (153 / 37) ¶                  |" in stats_section.pair_rows(s.pairs)
    assert ("- ¶ A vs B: the signed ranks favour A, the mean difference (-1.66) the other row (significant: the "
            "verdict follows the ranks).") in lines
    pair_js, = to_json(s)["pairwise"]
    assert (pair_js["favours"], pair_js["w_plus"], pair_js["w_minus"]) == ("A", 153.0, 37.0)


def test_zero_differences_are_split_between_the_signs():
    d = np.array([0.0, 0.0, *range(1, 13), -0.5, -1.5])  # 16 tasks, two zero differences
    b = 50 + np.arange(16.0)
    a = b + d
    split = scipy.stats.wilcoxon(d, zero_method="zsplit").pvalue  # normal approximation (zeros, 16 > 13 tasks)
    assert stats.wilcoxon_p(a, b) == pytest.approx(split, rel=1e-12) == pytest.approx(0.00248248, rel=1e-5)
    assert stats.wilcoxon_p(a, b) != pytest.approx(scipy.stats.wilcoxon(d).pvalue)  # zeros dropped: 0.00233
    # |d| ranks: the zeros 1.5 each, 0.5 -> 3, 1 -> 4, 1.5 -> 5, 2 -> 6, 3..12 -> 7..16; each zero's
    # rank half to each side; the smaller sum is scipy's statistic
    assert stats.signed_ranks(a, b) == (4 + 6 + sum(range(7, 17)) + 1.5, 3 + 5 + 1.5)
    assert scipy.stats.wilcoxon(d, zero_method="zsplit").statistic == 9.5
    # equal cells are a zero difference even when the float subtraction leaves noise
    x = np.array([0.1 + 0.2, 0.7, 0.9, 1.1, 1.3, 1.6])
    y = np.array([0.3, 0.7 - 1e-12, 0.8, 1.0, 1.2, 1.5])
    assert stats.differences(x, y)[:2].tolist() == [0.0, 0.0]
    assert stats.signed_ranks(x, y) == (4 * 4.5 + 1.5, 1.5)  # zeros: ranks 1, 2; the four 0.1: 3..6
    # nothing differs: p 1, no direction; an empty or NaN comparison is refused, not guessed
    assert stats.wilcoxon_p(np.ones(6), np.ones(6)) == 1.0
    assert stats.signed_ranks(np.ones(6), np.ones(6)) == (10.5, 10.5)
    assert stats.signed_ranks(np.array([]), np.array([])) == (0.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        stats.wilcoxon_p(np.array([1.0, np.nan, 3, 4, 5]), np.zeros(5))
    tie = stats.Pair("a", "b", ["t"] * 6, 0.0, (0.0, 0.0), 0.01, 3, 0, 3, w_plus=10.5, w_minus=10.5)
    assert tie.favours == "" and not tie.mean_disagrees


def test_interval_over_seeds_bad_and_edge_inputs():
    """3 tasks x 4 seeds: per seed, the mean over tasks; a t-interval with 3 degrees of freedom,
    computed here with scipy. Fewer than 3 seeds, or cells with different seeds: no interval."""
    rng = np.random.default_rng(7)
    acc = rng.normal(70, 2, size=(3, 4))
    table = {"four": {f"t{i}": list(acc[i]) for i in range(3)},
             "two": {f"t{i}": list(acc[i, :2]) for i in range(3)},
             "one": {f"t{i}": [acc[i, 0]] for i in range(3)},
             "same": {f"t{i}": [60.0, 60.0, 60.0] for i in range(3)},
             "partial": {"t0": list(acc[0, :3]), "t2": list(acc[2, :3])}}
    runs = frame(table)
    runs = pd.concat([runs, frame({"ragged": {"t0": [1.0, 2.0, 3.0], "t1": [1.0, 2.0, 3.0], "t2": [1.0, 2.0]}})])
    s = stats.analyse(runs, ["t0", "t1", "t2"], n_boot=100)
    per_seed = acc.mean(axis=0)
    t = scipy.stats.t.ppf(0.975, 3)
    half = t * per_seed.std(ddof=1) / 2
    assert s.mean_ci95["four"] == pytest.approx((per_seed.mean() - half, per_seed.mean() + half), rel=1e-12)
    assert s.ci_seeds["four"] == 4
    # its centre is the row's Mean (mean over tasks of the cells' means)
    assert np.mean(s.mean_ci95["four"]) == pytest.approx(np.mean([np.mean(v) for v in table["four"].values()]))
    # a partial row: over its own tasks
    part = acc[[0, 2], :3].mean(axis=0)
    lo, hi = scipy.stats.t.interval(0.95, 2, loc=part.mean(), scale=part.std(ddof=1) / np.sqrt(3))
    assert s.mean_ci95["partial"] == pytest.approx((lo, hi), rel=1e-12)
    assert s.mean_ci95["same"] == (60.0, 60.0)  # three equal seeds: zero width, not NaN
    for label, n in (("two", 2), ("one", 1), ("ragged", None)):
        assert all(np.isnan(s.mean_ci95[label])) and s.ci_seeds[label] == n
    js = to_json(s)
    assert js["mean_ci95"]["two"] is None and js["mean_ci95"]["ragged"] is None
    assert js["mean_ci95_seeds"] == {"four": 4, "one": 1, "partial": 3, "ragged": None, "same": 3, "two": 2}
    assert all(np.isnan(stats.t_interval(np.array([]))))
    assert stats.seed_means(runs, "nobody", ["t0"]) is None and stats.seed_means(runs, "four", []) is None


def test_rows_with_failed_seeds_are_left_out_of_ranks_and_tests():
    rng = np.random.default_rng(3)
    tasks = [f"t{i}" for i in range(6)]
    levels = rng.uniform(40, 80, 6)
    # per task a > c > b > d, every pair's differences distinct (no ties: scipy's exact p)
    runs = frame({r: {t: [lv + off + step * i, lv + off + step * i + 0.2]
                      for i, (t, lv) in enumerate(zip(tasks, levels))}
                  for r, off, step in (("a", 3, 0.3), ("c", 2, 0.2), ("b", 1, 0.1), ("d", 0, 0.0))})
    full = stats.analyse(runs, tasks, n_boot=100)
    assert full.rows == ["a", "c", "b", "d"] and full.failed == [] and len(full.pairs) == 6
    s = stats.analyse(runs, tasks, n_boot=100, failed=["c", "nobody"])  # c's cells are over the seeds that finished
    assert s.failed == ["c"] and s.rows == ["a", "b", "d"] and s.left_out == []
    assert s.average_rank == {"a": 1.0, "b": 2.0, "d": 3.0}
    assert [(p.a, p.b) for p in s.pairs] == [("a", "b"), ("a", "d"), ("b", "d")]
    # Holm over the 3 pairs left, as statsmodels gives it; each p the exact 2 / 2^6
    assert [p.p for p in s.pairs] == pytest.approx([2 / 64] * 3)
    assert [p.p_holm for p in s.pairs] == pytest.approx(list(multipletests([2 / 64] * 3, method="holm")[1]))
    assert s.friedman == pytest.approx(tuple(scipy.stats.friedmanchisquare(
        *[stats.cell_means(runs).loc[r, tasks] for r in ("a", "b", "d")])))
    assert "c" in s.mean_ci95  # still a CI (over its surviving seeds; here 2: NaN)
    js = to_json(s)
    assert js["failed_seeds"] == ["c"] and "c" not in js["average_rank"]
    lines = stats_section.section(s, None)
    assert ("Not compared (a seed's final fit failed and was not redone, § in the leaderboard: a cell over the "
            "surviving seeds is no contest): c.") in lines
    # fewer than 2 rows left: the reason names the seeds too
    two = stats.analyse(runs[runs["label"].isin(["a", "b"])], tasks, n_boot=100, failed=["b"])
    assert two.omitted == ("1 row(s) have a final run for every one of the 6 tasks and every seed; ranks and tests "
                           "need at least 2")


def cd_stats(rows: list[str], same: set[frozenset]) -> stats.SuiteStats:
    """Rows ranked 1, 2, ... in the order given; the pairs in ``same`` not significant, the rest are."""
    s = stats.SuiteStats([f"t{i}" for i in range(6)], rows, [], {r: i + 1.0 for i, r in enumerate(rows)}, {})
    s.pairs = [stats.Pair(a, b, s.tasks, 1.0, (0.0, 2.0), 0.01, 6, 0, 0, 0.5 if frozenset((a, b)) in same else 0.01)
               for i, a in enumerate(rows) for b in rows[i + 1:]]
    return s


def test_cd_caption_lists_groups_that_are_not_contiguous():
    """a ~ c and b ~ d, every other pair differs: two bars, each passing over a row not in it. The
    old caption ('rows joined by a thick bar are not significantly different') was false for b
    under the bar of a and c."""
    s = cd_stats(["a", "b", "c", "d"], {frozenset("ac"), frozenset("bd")})
    assert stats.cliques(s) == [["a", "c"], ["b", "d"]]
    assert stats.passed_over(s, ["a", "c"]) == ["b"]
    lines = stats_section.cd_caption(s)
    assert lines[1:] == [
        "  - a, c (the bar passes over b, which is not in this group: each differs significantly from at least one "
        "of its rows)",
        "  - b, d (the bar passes over c, which is not in this group: each differs significantly from at least one "
        "of its rows)"]
    assert lines[0].endswith("The bars, best-ranked first:")
    assert "Two rows that are in no group together differ significantly." in lines[0]
    # contiguous groups, and none at all
    chain = cd_stats(["a", "b", "c", "d"], {frozenset("ab"), frozenset("bc"), frozenset("ac"), frozenset("cd")})
    assert stats.cliques(chain) == [["a", "b", "c"], ["c", "d"]]
    assert stats_section.cd_caption(chain)[1:] == ["  - a, b, c", "  - c, d"]
    none = cd_stats(["a", "b", "c"], set())
    assert stats.cliques(none) == [] and stats_section.cd_caption(none)[0].endswith("No bar: every pair differs "
                                                                                   "significantly.")
    assert to_json(s)["cliques"] == [["a", "c"], ["b", "d"]]


@pytest.mark.parametrize("same", [
    {frozenset("ac"), frozenset("bd")},
    {frozenset("ab"), frozenset("bc"), frozenset("ac"), frozenset("cd"), frozenset("ce")},
    {frozenset(p) for p in ("ab", "ac", "ad", "ae", "bc", "de")},
])
def test_cd_caption_groups_are_the_bars_drawn(same):
    """The groups the caption lists are the bars scikit-posthocs draws: each bar's points are its
    rows' ranks (with a dot on each)."""
    s = cd_stats(["a", "b", "c", "d", "e"], same)
    from matplotlib.figure import Figure
    from scikit_posthocs import critical_difference_diagram

    drawn = critical_difference_diagram(pd.Series(s.average_rank), stats.p_matrix(s), alpha=stats.ALPHA,
                                        ax=Figure().add_subplot(), crossbar_props={"marker": "o"})
    bars = sorted(sorted(line.get_xdata()) for bar in drawn["crossbars"] for line in bar)
    assert bars == sorted([s.average_rank[r] for r in group] for group in stats.cliques(s))
