"""Optuna side of the runner: the storage, one tuning study per (suite, method, task), its
sampler and pruner, and the search space of the hyperparameters common to all methods.

Studies live in a shared storage (SQLite under ``--out`` by default, PostgreSQL/MySQL by URL), so
a rerun resumes and many workers can share one study; ``bench.run.coordination`` divides the work.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import optuna
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import TrialState

from .. import catalog
from ..compat import optuna_storage
from .coordination import GRACE_S, HEARTBEAT_S, RetryCallback
from ..errors import UserError, first_line
from ..identity import Cell
from ..tracking import IDENTITY_ATTR, ROLE_ATTR

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The recipe's common hyperparameters: the first trial of every study uses these values, the
# rest are searched in the ranges below. Method-specific ones come from ``Method.search_space``.
COMMON_DEFAULTS = {"lr": 1e-3, "weight_decay": 1e-4}
DEFAULT_STORAGE = "optuna.db"  # under --out; earlier versions wrote a journal file, optuna.journal


class FixedParams:
    """A trial as a search space sees it when some hyperparameters are fixed (``--hparam``): their
    ``suggest_*`` returns the fixed value (nothing is sampled for it), so what the space derives
    from them is derived from the fixed value (``--hparam dora.rank=32`` trains alpha 64, not two
    times a rank sampled and then overridden). Every other call goes to the trial."""

    def __init__(self, trial: optuna.Trial, fixed: dict):
        self._trial, self._fixed = trial, fixed

    def __getattr__(self, name: str):
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr
        return lambda param, *args, **kwargs: (self._fixed[param] if param in self._fixed
                                               else attr(param, *args, **kwargs))


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

    def _for(self, study, trial) -> TPESampler:
        if trial.number != self._number:
            self._number = trial.number
            position = trial_position(study, trial)
            self._tpe = TPESampler(seed=(self.seed * 1_000_003 + position) % 2**32, **self.kwargs)
        return self._tpe

    def infer_relative_search_space(self, study, trial):
        return self._for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(study, trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(study, trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(study, trial).after_trial(study, trial, state, values)


def default_storage_url(out: Path) -> str:
    """``sqlite:///<out>/optuna.db``; an ``out`` that no URL carries verbatim is a UserError
    (``tracking.sqlite_url``)."""
    from ..tracking import sqlite_url

    return sqlite_url(Path(out) / DEFAULT_STORAGE)


def open_storage(url: str | None, out: Path) -> optuna.storages.BaseStorage:
    """SQLite ``<out>/optuna.db`` by default; an RDB URL (sqlite/postgresql/mysql) when given, with
    the storage's heartbeat on (dead workers' trials fail after ``GRACE_S`` and are retried); a
    path without ``://``: a journal file (no heartbeat, so only workers of this host are found
    dead: fine on one machine, not across hosts)."""
    if url is None:
        url = default_storage_url(out)  # first: a path no URL carries is refused before anything is made
        Path(out).mkdir(parents=True, exist_ok=True)
    if "://" not in url:
        path = Path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
            return optuna.storages.JournalStorage(backend)
        except OSError as exc:
            raise UserError(f"cannot open Optuna journal {path}: {exc.strerror or exc}") from None
    from ..tracking import check_sqlite, sqlite_path

    check_sqlite(sqlite_path(url), "Optuna storage")  # damaged: one line, before a trial is written to it
    for attempt in range(4):  # workers started together race to create the tables; the losers retry
        try:
            # SQLite: many workers write to one file; wait for the lock rather than fail at 5 s
            engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S,
                                                 heartbeat_stale_trial_callback=RetryCallback())
            if url.startswith("sqlite"):
                optuna_storage.serialize_sqlite(storage)
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


def sampler_seed(cell: Cell) -> int:
    """TPE's seed for a cell's study: from the readable name versions before ``bench.identity``
    gave studies (``suite[@backbone].method[fixed].task``), so that a study of the default protocol
    draws the trials it drew before. Only the draws depend on it; the identity is the study's."""
    e = cell.experiment
    variant = dict(e.fixed, **({"drop_path_rate": e.drop_path_rate} if e.drop_path_rate else {}))
    suite = e.suite if e.backbone == catalog.load_suite(e.suite).backbone else f"{e.suite}@{e.backbone}"
    fixed = f"[{','.join(f'{k}={v}' for k, v in sorted(variant.items()))}]" if variant else ""
    return int(hashlib.sha256(f"{suite}.{e.method}{fixed}.{cell.task}".encode()).hexdigest()[:8], 16)


def trial_position(study: optuna.Study, trial) -> int:
    """A trial's position in its study's budget: how many trials before it did not fail. On one
    worker it equals the trial's number, except after an interruption: the failed trial and its
    re-queued copy share the position, so the copy trains with the same seed and later trials
    draw what they would have drawn."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and t.state != TrialState.FAIL)


def requeue(study: optuna.Study, trial) -> None:
    """Fail a trial this worker cannot finish (Ctrl-C, a tracking server gone) and queue it again
    with its parameters and user attributes, as the storage's retry callback does for a dead
    worker's trial."""
    RetryCallback()(study, study.tell(trial, state=TrialState.FAIL))


# a study's user attributes, IDENTITY_ATTR (its cell, ``Cell.to_dict()``) and ROLE_ATTR (what its trials
# are), are named in bench.tracking with every name a run records (``SCHEMA``)
ROLE_TUNING, ROLE_FINAL = "tuning", "final fits"


def open_study(storage, name: str, seed: int, cell: Cell | None = None, role: str = ROLE_TUNING,
               warmup_epochs: int = 0, force: bool = False) -> tuple[optuna.Study, bool]:
    """(the study ``name``, whether this call created it); ``force`` starts it afresh. Creating a study name is atomic in every storage, so exactly one
    of many workers opening a new study together gets ``created`` and does what must happen once
    (enqueue the defaults, queue the fits). The study of a ``cell`` (what the runner opens)
    stores its whole identity and its ``role``; one whose stored identity differs is never used
    (one line, exit 2).

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
        study = optuna.create_study(direction="maximize", **kwargs)
        if cell is not None:
            study.set_user_attr(IDENTITY_ATTR, cell.to_dict())
            study.set_user_attr(ROLE_ATTR, role)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if cell is not None and stored is not None and stored != cell.to_dict():
        raise UserError(f"Optuna study {name} holds another experiment ({Cell.from_dict(stored).to_json()}); "
                        "rerun with --force to start it afresh")
    return study, False


def study_role(summary) -> str | None:
    """``ROLE_TUNING`` or ``ROLE_FINAL`` for a study (or ``StudySummary``) this version wrote."""
    return summary.user_attrs.get(ROLE_ATTR)


def study_cell(summary) -> Cell | None:
    """The cell a study (a ``Study`` or a ``StudySummary``) tunes or fits, read from its stored
    identity; None for a study this version did not write."""
    try:
        return Cell.from_dict(summary.user_attrs.get(IDENTITY_ATTR))
    except (ValueError, TypeError, KeyError):
        return None


def best_params(study: optuna.Study) -> tuple[dict, str]:
    """Every hyperparameter the best complete trial trained with (its ``hparams`` record, derived
    ones included), or (empty, reason) when no trial completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {}, "no trial completed; defaults used"
    best = max(complete, key=lambda t: (t.value, -t.number))
    return dict(best.user_attrs["hparams"]), f"trial {best.number}"


def open_storage_readonly(location: str):
    """The storage at ``location``, opened without creating anything: a file must exist (and be
    undamaged), a server database must hold Optuna's tables. Its heartbeat settings are the
    runner's, so a trial is stale here exactly when the runner would fail it."""
    from ..tracking import check_sqlite, sqlite_path, sqlite_url

    url = location
    if "://" not in url:
        path = Path(url)
        if not path.is_file():
            raise UserError(f"no Optuna storage at {path}")
        if path.suffix != ".db":  # a journal file
            backend = optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
            return optuna.storages.JournalStorage(backend)
        url = sqlite_url(path)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is None or not path.is_file():
            raise UserError(f"no Optuna storage at {path or url}")
        check_sqlite(path, "Optuna storage")
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S)
    except Exception as exc:  # sqlalchemy raises many types: a dead server, no tables, another schema
        raise UserError(f"cannot read Optuna storage {url}: {first_line(exc)}") from None
