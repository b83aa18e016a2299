"""The coordination primitives on a real SQLite storage, in one process: the budget's exact count
when asks interleave, final fits handed out once, dead workers found by the storage's heartbeat
(another host) or by pid (this host) and re-enqueued with their attributes, and no check that
lists all studies."""
from __future__ import annotations

import os
import time

import optuna
import pytest
from optuna.trial import TrialState

from bench.run import coordination
from bench.run.coordination import FinalFits, TrialBudget, reap_dead
from bench.run.study import open_storage, open_study


@pytest.fixture
def storage(tmp_path):
    return open_storage(None, tmp_path)


def test_two_asks_for_the_last_slot_keep_exactly_one(storage):
    """Two workers both saw room for one more trial and both asked: the storage numbered their
    trials, so the higher one is refused as surplus and the budget ends exact."""
    study, _ = open_study(storage, "s", seed=0)
    budget = TrialBudget(storage, study, 2)
    first = budget.ask()
    study.tell(first, 1.0)
    a, b = study.ask(), study.ask()  # both past the budget's check at the same moment
    a.set_user_attr("owner", coordination.owner_id())
    assert sum(t.number < b.number for t in study.get_trials(states=coordination.TAKEN)) == 2  # b is surplus
    study.tell(a, 2.0)
    assert budget.ask() is None  # a and first fill the budget; b is still RUNNING and counts as taken
    study.tell(b, state=TrialState.FAIL)
    assert budget.ask() is None and budget.complete() and budget.finished() == 2


def test_budget_refuses_an_overshooting_trial_as_surplus(storage, monkeypatch):
    study, _ = open_study(storage, "s", seed=0)
    budget = TrialBudget(storage, study, 1)
    real_ask = optuna.Study.ask
    sneaked = []

    def ask_after_another_worker(self, *args, **kwargs):  # another worker asks between check and ask
        if not sneaked:
            sneaked.append(real_ask(self))
        return real_ask(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "ask", ask_after_another_worker)
    assert budget.ask() is None  # the other worker's trial 0 holds the only slot
    (mine,) = [t for t in study.trials if t.number == 1]
    assert mine.state == TrialState.FAIL and mine.user_attrs["surplus"]


def _queue(storage, name="s/final"):
    study, created = open_study(storage, name, seed=0)
    return FinalFits(storage, study, created)


def test_each_final_fit_goes_to_one_worker_and_done_fits_are_not_queued(storage):
    queue = _queue(storage)
    fits = {f"key{s}": {"seed": s, "params": {"lr": 0.1}, "source": "trial 0"} for s in (1, 2, 3)}
    queue.ensure_queued(fits, finished=lambda key: key == "key3")  # MLflow already holds key3
    other = _queue(storage)  # a second worker on the same study
    assert not other.created
    taken = [queue.pop(), other.pop()]
    assert sorted(t.user_attrs["seed"] for t in taken) == [1, 2]
    assert queue.pop() is None and other.pop() is None
    for t in taken:
        queue.study.tell(t, 50.0)
    other.ensure_queued(fits, finished=lambda key: key != "key1")  # done in MLflow except key1? key1 is COMPLETE
    assert [t.user_attrs["run_key"] for t in queue.study.get_trials(states=(TrialState.WAITING,))] == ["key1"]


def test_a_fit_queued_twice_runs_once(storage):
    queue = _queue(storage)
    for _ in range(2):  # two workers filled the same gap
        queue.study.enqueue_trial({}, user_attrs={"seed": 1, "params": {}, "source": "x", "run_key": "k"})
    trial = queue.pop()
    assert trial.number == 0 and queue.pop() is None
    assert queue.study.trials[1].state == TrialState.FAIL and queue.study.trials[1].user_attrs["duplicate"]


def test_a_dead_worker_on_another_host_is_found_by_the_heartbeat(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=1,
                                         heartbeat_stale_trial_callback=coordination.RetryCallback())
    queue = _queue(storage)
    queue.study.enqueue_trial({}, user_attrs={"seed": 7, "params": {"lr": 0.1}, "source": "x", "run_key": "k"})
    trial = queue.pop()
    trial.set_user_attr("owner", "another-host:123")  # owner_alive cannot tell: only the heartbeat can
    with coordination.lease(storage, queue.study, trial):
        pass  # one beat, then the worker vanishes
    assert reap_dead(storage, queue.study) == 0 and queue.study.trials[0].state == TrialState.RUNNING
    time.sleep(2.5)
    assert reap_dead(storage, queue.study) == 0  # failed by the heartbeat's own fail_stale_trials, not by pid
    states = [(t.state, t.user_attrs.get("seed"), t.user_attrs.get("run_key")) for t in queue.study.trials]
    assert states == [(TrialState.FAIL, 7, "k"), (TrialState.WAITING, 7, "k")]  # re-enqueued with its attributes
    retry = queue.pop()
    assert retry.number == 1 and retry.user_attrs["params"] == {"lr": 0.1}


def test_a_dead_process_of_this_host_is_found_at_once_and_an_ownerless_trial_after_its_grace(storage):
    study, _ = open_study(storage, "s", seed=0)
    dead = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0)})
    dead.set_user_attr("owner", f"{coordination.owner_id().rpartition(':')[0]}:999999999")
    ownerless = study.ask()
    assert reap_dead(storage, study) == 1  # the dead pid at once; the owner-less one is young
    assert reap_dead(storage, study, owner_grace_s=0) == 1
    by_number = {t.number: t for t in study.trials}
    assert by_number[dead.number].state == by_number[ownerless.number].state == TrialState.FAIL
    retried = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [t.params for t in retried] == [dead.params, {}]  # the same hyperparameters again


def test_the_default_storage_beats_for_a_running_trial(storage):
    study, _ = open_study(storage, "s", seed=0)
    trial = study.ask()
    with coordination.lease(storage, study, trial):
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), 0)
        assert coordination.HEARTBEAT_S == storage.get_heartbeat_interval()
        import sqlite3
        db = sqlite3.connect(storage.url.removeprefix("sqlite:///"))
        assert db.execute("select count(*) from trial_heartbeats where trial_id = ?", (trial_id,)).fetchone() == (1,)


def test_no_check_lists_all_studies(storage, monkeypatch):
    """Every coordination call reads one study; listing all of them (the old claim studies'
    cost, which grew with the sweep) fails here."""
    study, _ = open_study(storage, "s", seed=0)
    queue = _queue(storage)

    def refuse(*args, **kwargs):
        raise AssertionError("a coordination check listed every study")

    monkeypatch.setattr(type(storage), "get_all_studies", refuse)
    budget = TrialBudget(storage, study, 1)
    study.tell(budget.ask(), 1.0)
    assert budget.complete() and budget.ask() is None
    queue.ensure_queued({"k": {"seed": 1, "params": {}, "source": "x"}}, finished=lambda key: False)
    trial = queue.pop()
    with coordination.lease(storage, queue.study, trial):
        queue.study.tell(trial, 1.0)
    assert not queue.running() and reap_dead(storage, study) == 0


def _take_all(out, queue) -> None:
    """A worker process: take waiting fits until none waits; report their keys (or the error)."""
    try:
        storage = open_storage(None, out)
        study, created = open_study(storage, "s/final", seed=0)
        fits, keys = FinalFits(storage, study, created), []
        while (trial := fits.pop()) is not None:
            keys.append(trial.user_attrs["run_key"])
            study.tell(trial, 1.0)  # "Cannot tell a COMPLETE trial" if another worker had it too
        queue.put(keys)
    except Exception as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


def test_processes_taking_waiting_fits_together_each_get_their_own(tmp_path):
    """Six processes take 100 waiting fits from one SQLite study at once. Without BEGIN IMMEDIATE
    (``bench.compat.optuna_storage.serialize_sqlite``) SQLite handed one waiting trial to two workers (Optuna's
    read-then-write of its state is not atomic there); this failed on every try."""
    import multiprocessing as mp

    storage = open_storage(None, tmp_path)
    study, _ = open_study(storage, "s/final", seed=0)
    for i in range(100):
        study.enqueue_trial({}, user_attrs={"run_key": f"k{i}", "seed": i, "params": {}, "source": "x"})
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_take_all, args=(tmp_path, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join()
    assert not [r for r in results if isinstance(r, str)], results
    keys = [k for r in results for k in r]
    assert sorted(keys) == sorted(f"k{i}" for i in range(100))  # every fit once, none twice


def test_an_exited_but_unreaped_worker_is_dead():
    """A worker that was killed but not yet reaped by its parent (a zombie) still answers
    ``kill(pid, 0)``; it must count as dead, or its trial waits out the heartbeat's grace."""
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = f"{socket.gethostname()}:{proc.pid}"
    deadline = time.time() + 30
    while not coordination._zombie(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert coordination._zombie(proc.pid)  # exited, not reaped: kill(pid, 0) still succeeds
    assert not coordination.owner_alive(owner)
    proc.wait()
    assert not coordination.owner_alive(owner)
    assert coordination.owner_alive(f"{socket.gethostname()}:{os.getpid()}")
