"""Who runs what when many workers share one sweep, through Optuna's own mechanisms.

Every check here reads one study (a keyed lookup), never the list of all studies, so its cost
does not grow with the sweep.

- **Tuning budget.** A study's budget of ``--trials`` is its own trial count. A worker asks
  only while fewer trials than the budget are taken (waiting, running or finished), which is
  ``MaxTrialsCallback``'s rule. Made exact: after ``study.ask()`` the trial counts the taken
  trials numbered below it, and if the budget is already full it is told FAIL and marked
  ``surplus``. The storage numbers trials in one order for every worker, so no two workers can
  both believe they hold the last slot.
- **Final fits.** These are WAITING trials in a per-(method, task) final-fit study, one per
  seed, carrying ``seed`` and ``run_key`` as user attributes. The storage hands a waiting trial
  to exactly one worker (a compare-and-set on its state, as ``study.ask()`` pops one). A second
  trial of one run key (two workers queued the same fit) is a ``duplicate``: only the
  lowest-numbered live one runs. A fit that MLflow already holds FINISHED is told COMPLETE with
  its accuracy, not trained again.
- **Dead workers.**
  - On an RDB storage (SQLite, PostgreSQL, MySQL) the storage's heartbeat finds them
    (``heartbeat_interval`` / ``grace_period``; ``optuna.storages.fail_stale_trials``).
  - A trial of a dead process on this host is failed at once, without waiting for the grace
    period.
  - Either way the storage's retry callback re-enqueues the trial with its parameters and user
    attributes (the seed of a final fit, the defaults of a tuning trial).

Trials of these studies are what a user sees in optuna-dashboard: a tuning study per (method,
task) and variant, and its final-fit study ``<tuning study>/final``; nothing else.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from ..compat import optuna_storage

# Optuna marks the heartbeat API experimental and warns that heartbeats are meant for
# ``Study.optimize``; we drive them through ask-and-tell on purpose (``lease``).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
# Optuna 4.9 renamed the callback that re-enqueues a dead worker's trial; 4.0-4.8 only have the old name.
RetryCallback = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback

# How often a running trial records its heartbeat, and after how long without one it counts as
# dead: long enough that a training step, an evaluation or a busy database never looks like
# death, short enough that a preempted GPU's work is picked up within minutes.
HEARTBEAT_S = 30
GRACE_S = 180
# A trial is RUNNING from the storage call that hands it out; its owner is written by the next
# call. A trial that stays without an owner this long lost its worker in between.
OWNER_GRACE_S = 60
FINAL_SUFFIX = "/final"
TAKEN = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.WAITING, TrialState.RUNNING)


def owner_id() -> str:
    """Who is working on a trial: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """False only when ``owner`` is a process of this host that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: we cannot tell, assume it lives (its heartbeat will tell)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but not been reaped by its parent yet (Linux ``/proc``: state Z):
    ``os.kill(pid, 0)`` still succeeds on it, but it will never finish its trial."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (macOS): kill(0) is all we can tell
    return stat.rpartition(")")[2].split()[0] == "Z"
    return True


def final_study_name(tuning_study: str) -> str:
    return tuning_study + FINAL_SUFFIX


@contextmanager
def lease(storage, study: optuna.Study, trial: optuna.Trial):
    """While a worker runs ``trial``: its heartbeat every ``heartbeat_interval`` seconds, on a
    storage that has one (``study.optimize`` runs the same thread for its own trials;
    ask-and-tell leaves it to the caller)."""
    interval = optuna_storage.heartbeat_interval(storage)
    if interval is None:
        yield
        return
    trial_id = optuna_storage.trial_id(storage, study, trial.number)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                optuna_storage.record_heartbeat(storage, trial_id)
            except Exception:  # a database hiccup: the next beat retries; grace_period covers several
                pass

    optuna_storage.record_heartbeat(storage, trial_id)
    thread = threading.Thread(target=beat, name=f"heartbeat-{study.study_name}-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def reap_dead(storage, study: optuna.Study, owner_grace_s: float = OWNER_GRACE_S) -> int:
    """Fail the study's RUNNING trials whose worker is gone and re-enqueue them; the number failed.
    The storage's heartbeat covers every host (``fail_stale_trials``). A process of this host that
    no longer exists is failed at once, and a trial that never got an owner (its worker died
    between the call that handed it out and the next) after ``owner_grace_s``."""
    optuna.storages.fail_stale_trials(study)  # a no-op without a heartbeat
    now = datetime.now()
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner")
        if owner is None and t.datetime_start is not None and now - t.datetime_start > timedelta(seconds=owner_grace_s):
            dead.append(t)
        elif owner is not None and not owner_alive(owner):
            dead.append(t)
    retry = RetryCallback()
    failed = 0
    for t in dead:
        if not optuna_storage.fail_running(storage, study, t.number):
            continue  # another worker failed it first, and re-enqueued it
        retry(study, t)
        failed += 1
    return failed


def _refuse(study: optuna.Study, trial: optuna.Trial, reason: str, why: str) -> None:
    """Close a trial this worker must not run, saying why (it stays visible as FAIL)."""
    trial.set_user_attr(reason, True)
    trial.set_user_attr("failure_reason", why)
    study.tell(trial, state=TrialState.FAIL)


class TrialBudget:
    """Exactly ``budget`` finished trials in a tuning study, whatever the number of workers."""

    def __init__(self, storage, study: optuna.Study, budget: int):
        self.storage, self.study, self.budget = storage, study, budget

    def ask(self) -> optuna.Trial | None:
        """A trial of the budget for this worker (a waiting one first), or None when every trial of
        the budget is taken. Run it inside ``lease`` and tell it."""
        while True:
            reap_dead(self.storage, self.study)
            trials = self.study.get_trials(deepcopy=False, states=TAKEN)
            if len(trials) >= self.budget and not any(t.state == TrialState.WAITING for t in trials):
                return None
            trial = self.study.ask()
            trial.set_user_attr("owner", owner_id())
            ahead = self.study.get_trials(deepcopy=False, states=TAKEN)
            if sum(t.number < trial.number for t in ahead) < self.budget:
                return trial
            _refuse(self.study, trial, "surplus", f"the budget of {self.budget} trials was taken by other workers")

    def finished(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))

    def complete(self) -> bool:
        """Every trial of the budget finished (COMPLETE or PRUNED)."""
        return self.finished() >= self.budget


class FinalFits:
    """The final fits of one (method, task): a study whose WAITING trials are fits to run, one per
    run key (seed and hyperparameters); a trial's value is the fit's test accuracy."""

    def __init__(self, storage, study: optuna.Study, created: bool):
        self.storage, self.study, self.created = storage, study, created

    def ensure_queued(self, fits: dict[str, dict], finished: Callable[[str], bool], wait_s: float = 30.0) -> None:
        """Enqueue each fit (``run_key -> user attributes``) that is neither waiting nor running
        here nor ``finished`` in the tracking store (MLflow is the record of what is done).
        The worker that created the study enqueues at once and then marks the study ``queued``;
        another first waits up to ``wait_s`` for that mark, then fills gaps (a creator that died
        before marking; new run keys after a longer tuning budget). A gap filled twice is resolved
        by ``pop``."""
        deadline = time.monotonic() + (0 if self.created else wait_s)
        while not self.study.user_attrs.get("queued") and time.monotonic() < deadline:
            time.sleep(0.5)
        live = {t.user_attrs.get("run_key") for t in self.study.get_trials(deepcopy=False, states=LIVE)}
        for key, attrs in fits.items():
            if key not in live and not finished(key):
                self.study.enqueue_trial({}, user_attrs={**attrs, "run_key": key})
        if self.created:
            self.study.set_user_attr("queued", True)

    def running(self) -> bool:
        """Whether a fit of this study still waits or runs (here or on another worker)."""
        return bool(self.study.get_trials(deepcopy=False, states=LIVE))

    def pop(self) -> optuna.Trial | None:
        """A waiting fit for this worker, or None when none waits. Run it inside ``lease``, tell it.

        ``study.ask()`` would pop a waiting trial too, but creates a new one when another worker
        took the last. So the trial is claimed with the storage's own compare-and-set
        (``bench.compat.optuna_storage.claim_waiting``), which is what ``ask`` does inside."""
        reap_dead(self.storage, self.study)
        for waiting in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = optuna_storage.claim_waiting(self.storage, self.study, waiting.number, owner_id())
            if trial is None:
                continue  # another worker took it first
            key = trial.user_attrs.get("run_key")
            live = self.study.get_trials(deepcopy=False, states=LIVE)
            if any(t.number < trial.number and t.user_attrs.get("run_key") == key for t in live):
                _refuse(self.study, trial, "duplicate", f"fit {key} is queued or running as a lower trial")
                continue
            return trial
        return None
