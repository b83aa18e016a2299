"""Issue 15, `bench compare A B`: the one-line errors (an unknown row lists the rows, exit 2), the
choice of suite, and the verdict when the rows share too few tasks for a test. The verdicts on a
store with real differences are in test_stats.py (the synthetic VTAB-1k store). Issue 25: the
verdict follows the signed ranks, and its p is Holm-corrected over the leaderboard's pairs unless
the comparison was planned (``--planned``)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
from test_stats import VTAB, log_final

from bench import cli, tracking
from bench.identity import Experiment


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """vtab1k: lora on 3 tasks, bitfit on 4 (3 in common); demo: one run (a second suite)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    client = tracking.connect(uri)
    exp = tracking.experiment_id(client, "vtab1k")
    for task, acc in (("cifar", 60.0), ("dtd", 50.0), ("eurosat", 90.0)):
        log_final(client, exp, "lora", task, 1, acc)
    for task, acc in (("cifar", 58.0), ("dtd", 50.04), ("eurosat", 91.0), ("svhn", 80.0)):
        log_final(client, exp, "bitfit", task, 1, acc)
    demo = tracking.experiment_id(client, "demo")
    identity = Experiment(suite="demo", backbone="demo", weights_sha256="d" * 64, method="lora", epochs=4,
                          warmup_epochs=1, batch_size=64, trials=2, drop_path_rate=0.0)
    with tracking.TrackedRun(client, demo, "x", {"phase": tracking.PHASE_FINAL, "method": "lora", "task": "digits",
                                                 "seed": 1, tracking.EXPERIMENT_TAG: identity.to_json()},
                             {"method": "lora"}) as run:
        run.log_metrics({tracking.TEST_ACC: 30.0})
    return uri


def compare(capsys, *argv):
    code = cli.main(["compare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv) -> str:
    code, out, err = compare(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_too_few_common_tasks_for_a_test(store, capsys):
    code, out, err = compare(capsys, "lora", "bitfit", "--suite", "vtab1k", "--tracking-uri", store)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "bench compare: lora vs bitfit on suite vtab1k (3 tasks both have; seeds per cell: 1)"
    assert "| cifar   | 60.0   | 58.0     | +2.0            | win               |" in lines
    assert "| dtd     | 50.0   | 50.0     | 0.0             | tie               |" in lines  # -0.04: equal at 0.1
    assert "Not compared: tasks only bitfit has: svhn." in lines
    assert "Wins/ties/losses of lora: 1/1/1 (ties: equal at 1 decimal)" in lines
    assert not any(line.startswith("Wilcoxon") for line in lines)
    assert lines[-1] == "no test: lora and bitfit share 3 task(s), fewer than 5; lora better on 1/3"


def test_unknown_row_lists_the_rows(store, capsys):
    err = one_line_error(capsys, "lora", "vpt", "--suite", "vtab1k", "--tracking-uri", store)
    assert err == "error: no row 'vpt' in suite vtab1k; rows: bitfit, lora\n"


def test_a_row_with_itself(store, capsys):
    err = one_line_error(capsys, "lora", "lora", "--suite", "vtab1k", "--tracking-uri", store)
    assert "compare two different rows" in err


def test_several_suites_need_suite(store, capsys):
    err = one_line_error(capsys, "lora", "bitfit", "--tracking-uri", store)
    assert "several suites have final runs (demo, vtab1k)" in err and "pass --suite" in err


def test_unknown_suite_and_missing_store(capsys, tmp_path):
    assert "unknown suite 'nope'" in one_line_error(capsys, "a", "b", "--suite", "nope")
    db = tmp_path / "none" / "mlflow.db"
    assert "no MLflow store at" in one_line_error(capsys, "a", "b", "--suite", "demo", "--tracking-uri",
                                                   f"sqlite:///{db}")
    assert not db.parent.exists()


def test_too_few_tasks_planned_is_no_test_either(store, capsys):
    code, out, err = compare(capsys, "lora", "bitfit", "--planned", "--suite", "vtab1k", "--tracking-uri", store)
    assert code == 0, err
    assert out.splitlines()[-1] == "no test: lora and bitfit share 3 task(s), fewer than 5; lora better on 1/3"
    assert "Holm" not in out and "--planned" not in out


# --------------------------------------------------------------------------- issue 25

SKEWED = [0.5] * 17 + [-20.0] * 2  # lora - bitfit per task: 17 small wins, 2 large losses


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """vtab1k, one seed, 19 tasks at levels that are not round numbers: lora = bitfit + SKEWED,
    ia3 = bitfit - 1, vpt = bitfit + 0.2 with a second seed that FAILED on one task (§: left out of
    the leaderboard's tests, so its pairs are 3: lora, bitfit, ia3)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('skewed') / 'mlflow.db'}"
    client = tracking.connect(uri)
    exp = tracking.experiment_id(client, "vtab1k")
    for i, (task, d) in enumerate(zip(VTAB.tasks, SKEWED)):
        level = 50.3 + 1.7 * i
        for method, acc in (("bitfit", level), ("lora", level + d), ("ia3", level - 1), ("vpt", level + 0.2)):
            log_final(client, exp, method, task, 1, acc)
    log_final(client, exp, "vpt", "dtd", 2, 0.0, failed=True)
    return uri


def holm_of_first(ps: list[float]) -> float:
    """Holm's adjusted p of ps[0], by hand: sorted ascending, the k-th smallest times (m - k + 1),
    made monotone."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = {}, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - k) * ps[i]))
        adjusted[i] = running
    return adjusted[0]


def test_verdict_follows_the_signed_ranks_and_holm_over_the_leaderboard(skewed, capsys, tmp_path):
    """Issue 25: the signed-rank test favours lora (W+ 153 against W− 37), the mean bitfit. The
    verdict used to be 'bitfit > lora', on an uncorrected p."""
    p_skewed = scipy.stats.wilcoxon(np.array(SKEWED), zero_method="zsplit").pvalue  # 0.0106
    # bitfit above ia3 by 1 on every task: all |d| tied, so the normal approximation (1.3e-05)
    p_all = scipy.stats.wilcoxon(np.ones(19), zero_method="zsplit").pvalue
    # the leaderboard's pairs: lora-bitfit, lora-ia3 (lora - ia3 = SKEWED + 1: the same ranks), bitfit-ia3
    p_holm = holm_of_first([p_skewed, p_skewed, p_all])
    assert p_holm == pytest.approx(2 * p_skewed)
    code, out, err = compare(capsys, "lora", "bitfit", "--suite", "vtab1k", "--tracking-uri", skewed)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == ("lora > bitfit, p (Holm) = 0.021, 17/19 tasks; note: the mean difference favours bitfit "
                         "(lora − bitfit = -1.66 points), the signed ranks lora (rank sums 153 against 37)")
    assert "Mean difference (lora − bitfit): -1.66 points" in lines[-6]
    assert "Wilcoxon signed-rank test over 19 tasks (two-sided, zero differences split): p = 0.011" in lines
    assert ("Signed-rank sums: W+ = 153 (tasks where lora is higher), W− = 37 (where bitfit is): the test favours "
            "lora, the mean difference the other row") in lines
    assert (f"Holm-corrected over the leaderboard's 3 pairs (the p (Holm) the report shows for this pair): "
            f"p (Holm) = {p_holm:.3f}. Pass --planned if this one comparison was chosen before seeing the results."
            ) in lines
    assert f"{p_holm:.3f}" == "0.021"
    # planned in advance: its own p
    code, out, err = compare(capsys, "bitfit", "lora", "--planned", "--tracking-uri", skewed)
    assert out.splitlines()[-1] == ("lora > bitfit, p = 0.011, 17/19 tasks; note: the mean difference favours "
                                    "bitfit (lora − bitfit = -1.66 points), the signed ranks lora (rank sums 153 "
                                    "against 37)")
    assert ("Judged by p: --planned, one comparison chosen before seeing the results (no multiple-comparison "
            "correction).") in out.splitlines()
    # the same p (Holm) and direction as the report's JSON and table
    assert cli.main(["report", "--suite", "vtab1k", "--tracking-uri", skewed, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    js = json.loads((tmp_path / "vtab1k_stats.json").read_text())
    assert js["rows"] == ["lora", "bitfit", "ia3"] and js["failed_seeds"] == ["vpt"]
    (pair,) = [p for p in js["pairwise"] if {p["a"], p["b"]} == {"lora", "bitfit"}]
    assert pair["p_holm"] == pytest.approx(p_holm, rel=1e-5) and pair["p"] == pytest.approx(p_skewed, rel=1e-5)
    assert (pair["favours"], pair["w_plus"], pair["w_minus"]) == ("lora", 153.0, 37.0)
    md = (tmp_path / "vtab1k.md").read_text()
    assert "| lora   | bitfit | -1.66               |" in md and "| lora (153 / 37) ¶ " in md
    assert "| bitfit | ia3    | +1.00 " in md and f"| {pair['p']:.3f}   | {p_holm:.3f}      | 17/0/2 " in md


def test_a_row_the_leaderboard_does_not_test_is_corrected_with_its_pairs(skewed, capsys):
    """vpt has a failed seed: the leaderboard leaves it out, so compare corrects over the
    leaderboard's 3 pairs plus this one, says why, and flags vpt as the leaderboard does (§)."""
    p_skewed = scipy.stats.wilcoxon(np.array(SKEWED), zero_method="zsplit").pvalue
    # lora - vpt = SKEWED - 0.2: the same signed ranks
    p_all = scipy.stats.wilcoxon(np.ones(19), zero_method="zsplit").pvalue  # ia3 vs bitfit
    p_holm = holm_of_first([p_skewed, p_skewed, p_skewed, p_all])
    assert f"{p_holm:.3f}" == "0.032"
    code, out, err = compare(capsys, "lora", "vpt", "--suite", "vtab1k", "--tracking-uri", skewed)
    assert code == 0, err
    lines = out.splitlines()
    assert ("§ vpt: a seed's final fit failed and was not redone; its cells are over the seeds that finished, and "
            "the leaderboard leaves it out of its ranks and tests.") in lines
    assert ("Holm-corrected over the 3 pairs of the leaderboard(s) of lora and vpt plus this one, which the report "
            "does not test (vpt has a failed seed): p (Holm) = 0.032. Pass --planned if this one comparison was "
            "chosen before seeing the results.") in lines
    assert lines[-1].startswith("lora > vpt, p (Holm) = 0.032, 17/19 tasks; note: the mean difference favours vpt "
                                "(lora − vpt = -1.86 points)")
