"""Many workers, one sweep: concurrent workers share the stores and divide the work; a worker
killed with SIGKILL and started again loses nothing and counts nothing twice; the Optuna storage
holds a tuning study and a final-fit study per (method, task), nothing else. The same on
PostgreSQL with an MLflow server: tests/test_postgres.py."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import mlflow
import pytest

from bench import tracking

ARGS = ["--methods", "linear,lora", "--tasks", "digits,count", "--trials", "2", "--seeds", "1,2"]
EXPECTED = {(m, t, s) for m in ("linear", "lora") for t in ("digits", "count") for s in ("1", "2")}


def worker(out, *extra) -> subprocess.Popen:
    # one thread each, as `bench run --jobs N` starts them: two processes that each use both cores
    # slow each other down many times over
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", *ARGS, "--out", str(out), "--no-report",
                             "--jobs", "1", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finals(out) -> list:
    client = mlflow.MlflowClient(tracking.default_tracking_uri(out))
    exp = client.get_experiment_by_name(tracking.experiment_name("demo"))
    return client.search_runs([exp.experiment_id], "tags.phase = 'final'", max_results=1000)


def finished_by_key(out) -> dict:
    runs = [r for r in finals(out) if r.info.status == "FINISHED"]
    counts = Counter((r.data.tags["method"], r.data.tags["task"], r.data.tags["seed"]) for r in runs)
    assert all(c == 1 for c in counts.values()), f"a final fit was done twice: {counts}"
    return {(r.data.tags["method"], r.data.tags["task"], r.data.tags["seed"]): r.data.metrics["test_acc"]
            for r in runs}


def wait(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_three_workers_share_the_sweep_and_match_one_worker(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    procs = [worker(multi, "--epochs", "1") for _ in range(3)]
    outputs = [wait(p) for p in procs]
    wait(worker(single, "--epochs", "1"))

    multi_acc, single_acc = finished_by_key(multi), finished_by_key(single)
    assert set(multi_acc) == EXPECTED
    assert multi_acc == single_acc  # same trials, same best params, same seeds: same numbers
    owners = {r.data.tags["owner"] for r in finals(multi)}
    assert len(owners) >= 2, "the work was not divided between workers"
    finals_reported = [line for o in outputs for line in o.splitlines() if line.startswith("final ")]
    assert len(finals_reported) == len(EXPECTED)  # each worker reports what it did, nothing twice

    for out in (single, multi):
        assert_storage_holds_the_sweep(out, budget=2, seeds=(1, 2))


def assert_storage_holds_the_sweep(out, budget: int, seeds) -> None:
    """Exactly ``budget`` finished trials per tuning study, the defaults once among them; a
    final-fit study whose every fit finished once and points at its MLflow run; no other study."""
    import optuna
    from optuna.trial import TrialState

    from bench.run.study import open_storage
    storage = open_storage(None, out)
    pairs = [(m, t) for m in ("linear", "lora") for t in ("digits", "count")]
    assert len(optuna.get_all_study_summaries(storage)) == 2 * len(pairs)  # tuning + final-fit per pair, no other
    from conftest import find_study

    runs = {r.data.tags["run_key"]: r for r in finals(out) if r.info.status == "FINISHED"}
    for m, t in pairs:
        study = find_study(storage, m, t)
        finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        assert len(finished) == budget  # the budget, not overshot by concurrent workers
        assert_no_duplicate_trials(finished)
        others = [tr for tr in study.trials if tr not in finished]  # only refused surplus or dead workers' trials
        assert all(tr.state == TrialState.FAIL for tr in others), [tr.state for tr in others]
        fits = find_study(storage, m, t, final=True)
        done = fits.get_trials(states=(TrialState.COMPLETE,))
        assert sorted(tr.user_attrs["seed"] for tr in done) == sorted(seeds)
        for tr in done:
            run = runs[tr.user_attrs["run_key"]]
            assert tr.user_attrs["mlflow_run_id"] == run.info.run_id
            assert (run.data.tags["optuna_study"], run.data.tags["optuna_trial"]) == (fits.study_name, str(tr.number))
            assert tr.value == run.data.metrics["test_acc"]


def assert_no_duplicate_trials(trials) -> None:
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params), f"one configuration ran twice: {params}"
    defaults = [t for t in trials if t.params.get("lr") == 1e-3 and t.params.get("weight_decay") == 1e-4]
    assert len(defaults) == 1, f"{len(defaults)} default trials"


# A slow storage (a database across a network) widens the window between a worker's check that
# the budget has room and its ``ask``: every worker passes the check, and all of them ask.
SLOW_ASK = """
import sys, time, optuna
_ask = optuna.Study.ask
def _slow_ask(self, *args, **kwargs):
    time.sleep(2)
    return _ask(self, *args, **kwargs)
optuna.Study.ask = _slow_ask
import bench.cli
sys.exit(bench.cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_concurrent_workers_fill_the_budget_exactly(tmp_path, workers):
    """Each study ends with exactly --trials finished trials, the defaults once among them,
    under 1, 2 and 3 workers on a slow storage (issue 11, item 6: concurrent workers once ran the
    defaults two or three times; issue 12: the budget is the study's own trial count). A worker
    whose ask overshot the budget tells its trial FAIL, marked ``surplus``."""
    import optuna
    from optuna.trial import TrialState

    from bench.run.study import open_storage

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    argv = ["tune", "--method", "linear", "--task", "digits", "--trials", "3", "--epochs", "1", "--out", str(tmp_path)]
    procs = [subprocess.Popen([sys.executable, "-c", SLOW_ASK, *argv], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(workers)]
    for p in procs:
        wait(p)
    from conftest import find_study

    study = find_study(open_storage(None, tmp_path), "linear", "digits")
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 3
    assert_no_duplicate_trials(finished)
    refused = [t for t in study.trials if t not in finished]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("surplus") for t in refused)
    if workers == 1:
        assert not refused


def _finished_finals(db) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                           "where t.key = 'phase' and t.value = 'final' and r.status = 'FINISHED'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_sigkill_then_restart_loses_nothing_and_counts_nothing_twice(tmp_path):
    proc = worker(tmp_path, "--epochs", "2")
    db = tmp_path / "mlflow.db"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if db.exists() and _finished_finals(db) >= 3:
            break
        time.sleep(0.1)
    if proc.poll() is not None:
        pytest.fail("the worker finished before it could be killed: " + proc.communicate()[0][-2000:])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = set(finished_by_key(tmp_path))
    assert 3 <= len(done_before) < len(EXPECTED)

    wait(worker(tmp_path, "--epochs", "2"))
    after = finished_by_key(tmp_path)
    assert set(after) == EXPECTED
    statuses = Counter(r.info.status for r in finals(tmp_path))
    assert statuses["RUNNING"] == 0  # the run killed mid-fit was marked failed on restart
    assert statuses["FINISHED"] == len(EXPECTED)
    assert_storage_holds_the_sweep(tmp_path, budget=2, seeds=(1, 2))

