"""Optuna side of the runner: storage, one study per (suite, method, task), the search space of
the hyperparameters common to all methods, and claims on final fits.

Studies live in a shared storage (a local journal file by default, PostgreSQL/MySQL by URL), so
a rerun resumes and many workers can share one study. A study's budget is ``trials`` slots;
each slot is claimed by one worker (``Claims``), so concurrent workers never overshoot it and a
slot whose worker died is run again.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import optuna
from optuna.samplers import TPESampler
from optuna.trial import TrialState

from .errors import UserError, first_line

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The recipe's common hyperparameters: the first trial of every study uses these values, the
# rest are searched in the ranges below. Method-specific ones come from ``Method.search_space``.
COMMON_DEFAULTS = {"lr": 1e-3, "weight_decay": 1e-4}


def common_search_space(trial: optuna.Trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 5e-5, 5e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True),
    }


def owner_id() -> str:
    """Who is working on a trial or final fit: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """False only when ``owner`` is a process of this host that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: we cannot tell, assume it lives
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrialSeededTPE(TPESampler):
    """TPE whose random draws are seeded by (seed, trial number): one worker is reproducible,
    and concurrent workers sharing a study do not all draw the same start-up points."""

    def __init__(self, seed: int, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial) -> None:
        seed = (self._base_seed * 1_000_003 + trial.number) % 2**32
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


def open_storage(url: str | None, out: Path) -> optuna.storages.BaseStorage:
    """A journal file under ``out`` by default; an RDB URL (sqlite/postgresql/mysql) when given."""
    if url is None or "://" not in url:
        path = Path(url) if url else out / "optuna.journal"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
            return optuna.storages.JournalStorage(backend)
        except OSError as exc:
            raise UserError(f"cannot open Optuna journal {path}: {exc.strerror or exc}") from None
    for attempt in range(4):  # workers started together race to create the tables; the losers retry
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except ImportError as exc:
            raise UserError(f"cannot open Optuna storage {url!r}: {exc} (for PostgreSQL: "
                            "pip install 'psycopg[binary]')") from None
        except Exception as exc:  # sqlalchemy raises many types for bad URLs / dead servers
            racing = any(word in str(exc).lower() for word in ("already exists", "duplicate", "unique"))
            if racing and attempt < 3:
                time.sleep(1 + attempt)
                continue
            raise UserError(f"cannot open Optuna storage {url!r}: {first_line(exc)}") from None


def study_name(suite: str, method: str, task: str, fixed: dict | None = None) -> str:
    """``suite.method.task``; a method run with fixed hyperparameters (a variant, e.g. vpt with
    mode=shallow) gets its own study: ``suite.method[mode=shallow].task``."""
    variant = f"[{','.join(f'{k}={v}' for k, v in sorted(fixed.items()))}]" if fixed else ""
    return f"{suite}.{method}{variant}.{task}"


def open_study(storage, name: str, seed: int, warmup_epochs: int = 0, force: bool = False) -> optuna.Study:
    """Create or load the study; ``force`` starts it afresh. Trials of dead local workers that
    were left RUNNING are marked FAIL so they are not mistaken for live ones.

    The pruner never prunes inside the lr warm-up: a trial reports its validation accuracy after
    every epoch (step = epoch index), and the first step it may be pruned at is ``warmup_epochs``,
    the first epoch after the warm-up (pruning while the lr still ramps up favours large lrs)."""
    if force:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=TrialSeededTPE(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2,
                                                                   n_warmup_steps=max(warmup_epochs, 1)))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owner_alive(t.user_attrs.get("owner", "")):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return study


def enqueue_defaults(study: optuna.Study, params: dict) -> None:
    """Enqueue the recipe-default trial unless a live or finished trial already has these params.
    Called only by the worker that holds the study's first trial slot, so concurrent workers
    never enqueue it twice (``skip_if_exists`` alone is check-then-act, and it would also count a
    FAILED trial of a dead worker, losing the default trial for good)."""
    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    if any(t.system_attrs.get("fixed_params", t.params) == params
           for t in study.get_trials(deepcopy=False, states=live)):
        return
    study.enqueue_trial(params)


def best_params(study: optuna.Study) -> tuple[dict, str]:
    """Params of the best complete trial, or (empty, reason) when no trial completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {}, "no trial completed; recipe defaults used"
    best = max(complete, key=lambda t: (t.value, -t.number))
    return dict(best.params), f"trial {best.number}"


class Claims:
    """Exactly-once final fits across workers, through the shared Optuna storage: a claim is a
    study named ``claim:<key>#<attempt>``; creating a study name is atomic in every storage.
    A claim whose owner died (same host, pid gone) or stopped beating for ``stale_s`` is taken
    over by creating the next attempt."""

    def __init__(self, storage, stale_s: float = 1800.0):
        self.storage = storage
        self.stale_s = stale_s
        self._current: dict[str, int] = {}
        self._first_seen: dict[str, float] = {}

    def _attempts(self, key: str) -> list:
        prefix = f"claim:{key}#"
        return sorted((s for s in self.storage.get_all_studies() if s.study_name.startswith(prefix)),
                      key=lambda s: int(s.study_name.rsplit("#", 1)[1]))

    def acquire(self, key: str, force: bool = False) -> bool:
        """True when this worker now owns ``key``; ``force`` overrides a finished claim."""
        attempts = self._attempts(key)
        if attempts and not force and self._held(attempts[-1]):
            return False
        attempt = len(attempts)
        try:
            sid = self.storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE],
                                                f"claim:{key}#{attempt}")
        except optuna.exceptions.DuplicatedStudyError:
            return False
        self._current[key] = sid
        self.beat(key)  # the heartbeat first: an attempt without one is still being created
        self.storage.set_study_user_attr(sid, "owner", owner_id())
        return True

    def _held(self, attempt) -> bool:
        """Whether the latest attempt still holds its key: done, or owned by a live worker."""
        attrs = attempt.user_attrs
        if attrs.get("done"):
            return True
        if "heartbeat" not in attrs:
            # another worker created it a moment ago and is writing its attributes; only if it
            # stays bare for ``stale_s`` did its creator die in between
            first_seen = self._first_seen.setdefault(attempt.study_name, time.time())
            return time.time() - first_seen < self.stale_s
        fresh = time.time() - float(attrs["heartbeat"]) < self.stale_s
        return fresh and owner_alive(attrs.get("owner", ""))

    def is_done(self, key: str) -> bool:
        attempts = self._attempts(key)
        return bool(attempts) and bool(attempts[-1].user_attrs.get("done"))

    def beat(self, key: str) -> None:
        self.storage.set_study_user_attr(self._current[key], "heartbeat", time.time())

    def done(self, key: str) -> None:
        self.storage.set_study_user_attr(self._current[key], "done", True)

    def release(self, key: str) -> None:
        """Give a claim back after a failure so another worker (or a rerun) may try again."""
        self.storage.set_study_user_attr(self._current[key], "heartbeat", 0)
        self.storage.set_study_user_attr(self._current[key], "owner", "released:0")
