"""`bench status` (issue 30): how far a sweep is, read from its stores and never written.

A finished sweep (a real micro run) and a partly-run one (studies written as the runner writes
them, with trials in every state, timed, owned by live, dead, fresh and stale workers) give exact
tables, workers alive and time left; a store that is not there is one line, and is not created."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.trial import TrialState

from bench import tracking
from bench.cli import main
from bench.compat import optuna_storage
from bench.identity import Experiment
from bench.run.coordination import final_study_name
from bench.run.study import ROLE_FINAL, open_storage, open_study

pytestmark = pytest.mark.usefixtures("one_thread")
HEADER = ("| suite   | method   | studies done   | trials done   |   running |   waiting |   failed | fits done   |"
          "   running |   waiting |   failed |   in MLflow |   workers |")


def table_rows(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]


def test_status_of_a_finished_sweep(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--methods", "linear", "--tasks", "digits", "--trials", "2", "--epochs", "1",
                 "--seeds", "1,2", "--out", str(out), "--no-report", "--jobs", "1"]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in out.iterdir())
    assert main(["status", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == HEADER
    assert table_rows(printed) == [["demo", "linear", "1/1", "2/2", "0", "0", "0", "2/2", "0", "0", "0", "2", "0"]]
    assert "workers alive: 0 " in printed
    assert "time left: none; every trial and final fit of the studies opened so far is done" in printed
    assert sorted(p.name for p in out.iterdir()) == before  # read only


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _experiment(method: str) -> Experiment:
    return Experiment(suite="demo", backbone="demo", weights_sha256="ab" * 32, method=method, epochs=1,
                      warmup_epochs=0, batch_size=32, trials=3, drop_path_rate=0.0)


T0 = datetime(2026, 1, 1, 12, 0, 0)


def _add(study, state, seconds=None, value=None, **user_attrs):
    """A trial as the runner leaves it, ``seconds`` long when finished (started at T0)."""
    finished = state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    study.add_trial(optuna.trial.FrozenTrial(
        number=-1, state=state, value=value if state == TrialState.COMPLETE else None,
        datetime_start=T0, datetime_complete=T0 + timedelta(seconds=seconds or 0) if finished else None,
        params={}, distributions={}, user_attrs=user_attrs, system_attrs={}, intermediate_values={}, trial_id=-1))
    return study.trials[-1].number


def partly_run_sweep(out):
    """lora on digits and count, linear on digits; budget 3 trials, seeds 1 and 2:

    - lora/digits: 3 trials done (10, 20, 30 s); fits queued: seed 1 done (60 s), seed 2 running,
      owned by this test's process (alive);
    - lora/count: 1 trial done (20 s), 1 running owned by a dead process of this host, 1 failed by a
      dead worker and queued again (waiting), 1 surplus claim (refused on purpose: no failure);
    - linear/digits: 1 trial done (40 s), 1 running on another host with a fresh heartbeat (alive),
      1 running on another host whose heartbeat is an hour old (dead); its fits not queued yet.
    In MLflow: lora's seed-1 fit FINISHED."""
    storage = open_storage(None, out)
    me, host = f"{socket.gethostname()}:{os.getpid()}", socket.gethostname()
    lora, linear = _experiment("lora"), _experiment("linear")
    cells = {(m, t): e.on(t, "cd" * 32) for m, e in (("lora", lora), ("linear", linear)) for t in ("digits", "count")}

    def tuning(method, task):
        cell = cells[method, task]
        return open_study(storage, cell.study_name(), 0, cell)[0]

    s = tuning("lora", "digits")
    for sec in (10, 20, 30):
        _add(s, TrialState.COMPLETE, sec, value=50.0)
    cell = cells["lora", "digits"]
    f = open_study(storage, final_study_name(cell.study_name()), 0, cell, ROLE_FINAL)[0]
    _add(f, TrialState.COMPLETE, 60, value=70.0, seed=1, run_key="k1", owner=me)
    _add(f, TrialState.RUNNING, seed=2, run_key="k2", owner=me)
    f.set_user_attr("queued", True)

    s = tuning("lora", "count")
    _add(s, TrialState.COMPLETE, 20, value=40.0)
    _add(s, TrialState.RUNNING, owner=f"{host}:{_dead_pid()}")
    _add(s, TrialState.FAIL, 5, owner="elsewhere:1")
    s.enqueue_trial({}, user_attrs={"recipe_default": True})
    _add(s, TrialState.FAIL, 0, surplus=True, failure_reason="the budget of 3 trials was taken by other workers")

    s = tuning("linear", "digits")
    _add(s, TrialState.COMPLETE, 40, value=30.0)
    fresh = _add(s, TrialState.RUNNING, owner="node7:11")
    stale = _add(s, TrialState.RUNNING, owner="node8:12")
    for number in (fresh, stale):
        optuna_storage.record_heartbeat(storage, optuna_storage.trial_id(storage, s, number))
    con = sqlite3.connect(out / "optuna.db")
    con.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour') WHERE trial_id = ?",
                (optuna_storage.trial_id(storage, s, stale),))
    con.commit()
    con.close()

    client = tracking.connect(tracking.default_tracking_uri(out))
    exp_id = tracking.experiment_id(client, "demo")
    tags = {"phase": "final", tracking.EXPERIMENT_TAG: lora.to_json(), "run_key": "k1"}
    with tracking.TrackedRun(client, exp_id, "lora/digits seed 1", tags, {}):
        pass


def test_status_of_a_partly_run_sweep(tmp_path, capsys):
    out = tmp_path / "out"
    partly_run_sweep(out)
    before = {p.name: p.stat().st_size for p in out.iterdir()}
    assert main(["status", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == HEADER
    assert table_rows(printed) == [
        # studies done/opened, trials done/budget, running, waiting, failed, fits done/total, running, waiting,
        # failed, in MLflow, workers alive
        ["demo", "linear", "0/1", "1/3", "2", "0", "0", "0/?", "0", "0", "0", "0", "1"],
        ["demo", "lora", "0/2", "4/6", "1", "1", "1", "1/4", "1", "0", "0", "1", "1"],
    ]
    assert "workers alive: 2 " in printed
    # trials: 2 + 2 left; fits: lora's seed 2 and count's two seeds (3); linear's fits not queued yet.
    # lora: 2 x 20 s (its trials' mean) + 3 x 60 s = 220 s; linear: 2 x 40 s = 80 s; over 2 workers: 150 s
    assert ("time left: about 2 min 30 s plus those fits (4 trials and 3 final fits remain, and the fits of 1 study "
            "still tuning (not queued yet); measured so far: a trial 24 s, a fit 60 s; over 2 workers alive)") in printed
    assert main(["status", "--out", str(out), "--suite", "vtab1k"]) == 0
    assert capsys.readouterr().out.strip() == f"bench status: no study of suite vtab1k in {out / 'optuna.db'} yet"
    assert {p.name: p.stat().st_size for p in out.iterdir()} == before  # read only


@pytest.mark.parametrize("make_argv, needle", [
    (lambda t: ["--out", str(t / "nothing")], "no Optuna storage under"),
    (lambda t: ["--storage", f"sqlite:///{t}/missing.db", "--tracking-uri", f"sqlite:///{t}/m.db"],
     "no Optuna storage at"),
    (lambda t: ["--storage", str(t / "missing.journal"), "--tracking-uri", f"sqlite:///{t}/m.db"],
     "no Optuna storage at"),
    (lambda t: ["--storage", f"sqlite:///{_optuna_only(t)}", "--tracking-uri", f"sqlite:///{t}/m.db"],
     "no MLflow store at"),
], ids=["out-without-stores", "sqlite-missing", "journal-missing", "mlflow-missing"])
def test_a_store_that_is_not_there_is_one_line_and_not_created(tmp_path, capsys, make_argv, needle):
    argv = make_argv(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["status", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created


def _optuna_only(tmp_path):
    path = tmp_path / "only" / "optuna.db"
    if not path.exists():
        open_storage(None, path.parent)
    return path
