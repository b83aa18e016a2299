"""Issue 15, `bench compare A B`: the one-line errors (an unknown row lists the rows, exit 2), the
choice of suite, and the verdict when the rows share too few tasks for a test. The verdicts on a
store with real differences are in test_stats.py (the synthetic VTAB-1k store)."""
from __future__ import annotations

import pytest
from test_stats import log_final

from bench import cli, tracking


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
    with tracking.TrackedRun(client, demo, "x", {"phase": tracking.PHASE_FINAL, "method": "lora", "task": "digits",
                                                 "seed": 1}, {"method": "lora"}) as run:
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
