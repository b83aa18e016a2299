"""Optuna side of the runner: the storage, one tuning study per (suite, method, task), its
sampler and pruner, and the search space of the hyperparameters common to all methods.

Studies live in a shared storage (SQLite under ``--out`` by default, PostgreSQL/MySQL by URL), so
a rerun resumes and many workers can share one study; ``bench.coordination`` divides the work.
"""
from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import TrialState

from .coordination import GRACE_S, HEARTBEAT_S, RetryCallback
from .errors import UserError, first_line

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The recipe's common hyperparameters: the first trial of every study uses these values, the
# rest are searched in the ranges below. Method-specific ones come from ``Method.search_space``.
COMMON_DEFAULTS = {"lr": 1e-3, "weight_decay": 1e-4}
DEFAULT_STORAGE = "optuna.db"  # under --out; earlier versions wrote a journal file, optuna.journal


def common_search_space(trial: optuna.Trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 5e-5, 5e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True),
    }


class TrialSeededTPE(BaseSampler):
    """TPE whose random draws are seeded by (seed, trial number): one worker is reproducible,
    and concurrent workers sharing a study do not all draw the same start-up points. TPE keeps no
    state between trials but its random generator (it reads the history from the study), so each
    trial gets a fresh ``TPESampler`` seeded for it: the same draws as reseeding one sampler's
    generator, through the public constructor."""

    def __init__(self, seed: int, **kwargs):
        self.seed, self.kwargs = seed, kwargs
        self._number, self._tpe = None, None

    def _for(self, trial) -> TPESampler:
        if trial.number != self._number:
            self._number = trial.number
            self._tpe = TPESampler(seed=(self.seed * 1_000_003 + trial.number) % 2**32, **self.kwargs)
        return self._tpe

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def default_storage_url(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / DEFAULT_STORAGE}"


def open_storage(url: str | None, out: Path) -> optuna.storages.BaseStorage:
    """SQLite ``<out>/optuna.db`` by default; an RDB URL (sqlite/postgresql/mysql) when given, with
    the storage's heartbeat on (dead workers' trials fail after ``GRACE_S`` and are retried); a
    path without ``://``: a journal file (no heartbeat, so only workers of this host are found
    dead: fine on one machine, not across hosts)."""
    if url is None:
        Path(out).mkdir(parents=True, exist_ok=True)
        url = default_storage_url(out)
    if "://" not in url:
        path = Path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
            return optuna.storages.JournalStorage(backend)
        except OSError as exc:
            raise UserError(f"cannot open Optuna journal {path}: {exc.strerror or exc}") from None
    for attempt in range(4):  # workers started together race to create the tables; the losers retry
        try:
            # SQLite: many workers write to one file; wait for the lock rather than fail at 5 s
            engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S,
                                                 heartbeat_stale_trial_callback=RetryCallback())
            if url.startswith("sqlite"):
                serialize_sqlite(storage)
            return storage
        except ImportError as exc:
            raise UserError(f"cannot open Optuna storage {url!r}: {exc} (for PostgreSQL: "
                            "pip install 'psycopg[binary]')") from None
        except Exception as exc:  # sqlalchemy raises many types for bad URLs / dead servers
            racing = any(word in str(exc).lower() for word in ("already exists", "duplicate", "unique"))
            if racing and attempt < 3:
                time.sleep(1 + attempt)
                continue
            raise UserError(f"cannot open Optuna storage {url!r}: {first_line(exc)}") from None


def serialize_sqlite(storage: optuna.storages.RDBStorage) -> None:
    """Make each of the storage's SQLite transactions take the database's write lock when it
    begins (``BEGIN IMMEDIATE``: SQLAlchemy's documented recipe for pysqlite).

    Optuna's RDB storage reads a trial's state, then writes it. It relies on ``SELECT ... FOR
    UPDATE`` to make the pair atomic; PostgreSQL and MySQL honour that, but SQLite ignores it,
    and pysqlite begins a transaction only at its first write. So two workers could both read
    WAITING and both set RUNNING: one waiting trial handed to two workers. The sweep simulation
    (``benchmarks/sweep_simulation.py``) saw this 7 times in 500 units, and one final fit ran
    twice. With the lock taken at BEGIN, the read and the write are one step."""
    from sqlalchemy import event

    event.listen(storage.engine, "connect", lambda dbapi_con, _: setattr(dbapi_con, "isolation_level", None))
    event.listen(storage.engine, "begin", lambda con: con.exec_driver_sql("BEGIN IMMEDIATE"))
    storage.engine.dispose()  # the connections that created the tables predate the listeners


def study_name(suite: str, method: str, task: str, fixed: dict | None = None) -> str:
    """``suite.method.task``; a method run with fixed hyperparameters (a variant, e.g. vpt with
    mode=shallow) gets its own study: ``suite.method[mode=shallow].task``."""
    variant = f"[{','.join(f'{k}={v}' for k, v in sorted(fixed.items()))}]" if fixed else ""
    return f"{suite}.{method}{variant}.{task}"


def open_study(storage, name: str, seed: int, warmup_epochs: int = 0, force: bool = False) -> tuple[optuna.Study, bool]:
    """(the study, whether this call created it); ``force`` starts it afresh. Creating a study
    name is atomic in every storage, so exactly one of many workers opening a new study together
    gets ``created`` and does what must happen once (enqueue the recipe defaults, queue the fits).

    The pruner never prunes inside the lr warm-up: a trial reports its validation accuracy after
    every epoch (step = epoch index), and the first step it may be pruned at is ``warmup_epochs``,
    the first epoch after the warm-up (pruning while the lr still ramps up favours large lrs)."""
    if force:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
    kwargs = dict(study_name=name, storage=storage, sampler=TrialSeededTPE(seed=seed),
                  pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(warmup_epochs, 1)))
    try:
        return optuna.create_study(direction="maximize", **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs), False


def best_params(study: optuna.Study) -> tuple[dict, str]:
    """Params of the best complete trial, or (empty, reason) when no trial completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {}, "no trial completed; recipe defaults used"
    best = max(complete, key=lambda t: (t.value, -t.number))
    return dict(best.params), f"trial {best.number}"
