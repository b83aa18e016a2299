"""Many workers, one sweep: concurrent workers share the stores and divide the work; a worker
killed with SIGKILL and started again loses nothing and counts nothing twice."""
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

    import optuna

    from bench.tune import open_storage
    for out in (single, multi):
        storage = open_storage(None, out)
        for m in ("linear", "lora"):
            for t in ("digits", "count"):
                study = optuna.load_study(study_name=f"demo.{m}.{t}", storage=storage)
                assert len(study.trials) == 2  # the budget, not overshot by concurrent workers
                assert_no_duplicate_trials(study)


def assert_no_duplicate_trials(study) -> None:
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params), f"{study.study_name}: one configuration ran twice: {params}"
    defaults = [t for t in study.trials if t.params.get("lr") == 1e-3 and t.params.get("weight_decay") == 1e-4]
    assert len(defaults) == 1, f"{study.study_name}: {len(defaults)} recipe-default trials"


# A slow storage (a database across a network) widens the window between Optuna's check that a
# configuration is not enqueued yet and the enqueue: every worker's check-then-act races.
SLOW_STORAGE = """
import sys, time, optuna
_check = optuna.Study._should_skip_enqueue
def _slow_check(self, params):
    skip = _check(self, params)
    time.sleep(3)
    return skip
optuna.Study._should_skip_enqueue = _slow_check
import bench.cli
sys.exit(bench.cli.main(sys.argv[1:]))
"""


def test_concurrent_workers_never_run_the_default_trial_twice(tmp_path):
    """Workers that open a fresh study together each saw it empty and enqueued the recipe
    defaults: the study's budget then held the same configuration two or three times (issue 11,
    item 6; seen with two workers on linear/textures). Three workers on a slow storage."""
    import optuna

    from bench.tune import open_storage

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    argv = ["tune", "--method", "linear", "--task", "digits", "--trials", "3", "--epochs", "1", "--out", str(tmp_path)]
    procs = [subprocess.Popen([sys.executable, "-c", SLOW_STORAGE, *argv], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    for p in procs:
        wait(p)
    study = optuna.load_study(study_name="demo.linear.digits", storage=open_storage(None, tmp_path))
    assert len(study.trials) == 3
    assert_no_duplicate_trials(study)


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


@pytest.mark.skipif(not os.environ.get("BENCH_TEST_POSTGRES_URL"),
                    reason="set BENCH_TEST_POSTGRES_URL=postgresql://user:pass@host/db to run against PostgreSQL")
def test_two_workers_share_a_postgresql_study(tmp_path):
    url = os.environ["BENCH_TEST_POSTGRES_URL"]
    out = tmp_path / "pg"
    procs = [worker(out, "--epochs", "1", "--storage", url) for _ in range(2)]
    for p in procs:
        wait(p)
    assert set(finished_by_key(out)) == EXPECTED
