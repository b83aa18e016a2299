"""How far a sweep is, read from its stores, which are never written or created: `bench status`
(``bench.commands.status``) prints it as a table, `bench run --wait` as its progress bar's postfix.

Per suite and experiment (a leaderboard row): the (method, task) studies finished of those opened,
the tuning trials and the final fits done, running, waiting and failed, the final fits MLflow
holds FINISHED (what `bench report` counts), the workers alive, and the time left: the mean wall
time of the trials and fits finished so far times what remains, over the workers alive.

- Studies are read through their stored identity and role (``bench.run.study.study_cell`` and
  ``study_role``), never through their names; a study no `bench run` of this version wrote is
  skipped.
- A study is *finished* when its final fits are queued and none waits or runs. Totals count the
  studies the workers have opened so far: a worker opens a (method, task)'s studies when it
  reaches it, so early in a sweep the totals grow.
- *failed* counts trials and fits that ended FAIL: a dead or preempted worker's (re-queued, so
  they show again as waiting), a fit that diverged; not the surplus and duplicate claims that the
  coordination refuses on purpose (``bench.run.coordination``).
- A worker is *alive* when it owns a running trial or fit that has a recent heartbeat (within the
  storage's grace period) or, for a worker of this host, whose process exists.
"""
from __future__ import annotations

import functools
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, first_line
from .study import open_storage_readonly

DONE, RUNNING, WAITING, FAILED = "done", "running", "waiting", "failed"
REFUSED = ("surplus", "duplicate")  # claims the coordination refuses on purpose: no failure


@dataclass
class Counts:
    """Trials (or fits) of a row by state, and the wall seconds of those finished."""
    states: Counter = field(default_factory=Counter)
    seconds: list = field(default_factory=list)

    def add(self, trial, finished_states) -> None:
        from optuna.trial import TrialState

        if trial.state in finished_states:
            self.states[DONE] += 1
            if trial.datetime_start is not None and trial.datetime_complete is not None:
                self.seconds.append((trial.datetime_complete - trial.datetime_start).total_seconds())
        elif trial.state == TrialState.RUNNING:
            self.states[RUNNING] += 1
        elif trial.state == TrialState.WAITING:
            self.states[WAITING] += 1
        elif trial.state == TrialState.FAIL and not any(trial.user_attrs.get(r) for r in REFUSED):
            self.states[FAILED] += 1


@dataclass
class Row:
    """One (suite, experiment): its (method, task) cells, trials, fits and workers."""
    suite: str
    experiment: object
    cells: set = field(default_factory=set)
    finished_cells: set = field(default_factory=set)
    tuning_studies: int = 0
    budget: int = 0  # trials per tuning study (the experiment's --trials)
    trials: Counts = field(default_factory=Counts)
    fits: Counts = field(default_factory=Counts)
    queued_cells: set = field(default_factory=set)  # cells whose final fits are queued
    seeds: set = field(default_factory=set)  # the seeds of the fits queued so far
    fit_keys: int = 0  # distinct final fits queued (run keys)
    fits_left: int = 0  # of those, neither done nor diverged
    workers: set = field(default_factory=set)
    mlflow_finished: int | None = None

    @property
    def trials_total(self) -> int:
        return self.budget * self.tuning_studies

    @property
    def unqueued(self) -> int:
        """Cells opened whose final fits are not queued yet (still tuning)."""
        return len(self.cells - self.queued_cells)

    @property
    def fits_total(self) -> int | None:
        """Fits of the cells opened so far: those queued, and for a cell still tuning one per seed
        the row's queued cells have (None while none has: the seeds are not known yet)."""
        if not self.unqueued:
            return self.fit_keys
        return self.fit_keys + self.unqueued * len(self.seeds) if self.seeds else None

    @property
    def fits_remaining(self) -> int | None:
        if not self.unqueued:
            return self.fits_left
        return self.fits_left + self.unqueued * len(self.seeds) if self.seeds else None


# --------------------------------------------------------------------------- the stores, read only

def storage_location(storage: str | None, out: str | Path) -> str:
    """The Optuna storage a run with these flags used: ``--storage``, else the SQLite file under
    ``--out`` (``optuna.journal`` for runs of older versions). Not there: one line."""
    if storage:
        return storage
    out = Path(out)
    for name in ("optuna.db", "optuna.journal"):
        if (out / name).is_file():
            return str(out / name)
    raise UserError(f"no Optuna storage under {out} (optuna.db): nothing has run with --out {out}; "
                    "pass --out of a run, or --storage URL")


def tracking_location(uri: str | None, out: str | Path) -> str:
    from .. import tracking

    return uri or tracking.default_tracking_uri(out)


def mlflow_client(uri: str):
    """An MLflow client of a store that exists: a SQLite or file store must be there, a database
    must hold MLflow's tables (a client on an empty one would create them)."""
    import logging

    from .. import tracking

    tracking.fail_fast()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if uri.startswith("sqlite"):
        path = tracking.sqlite_path(uri)
        if path is None or not path.is_file():
            raise UserError(f"no MLflow store at {path or uri}: pass --out of a run, or --tracking-uri")
        tracking.check_sqlite(path, "MLflow store")
    elif uri.startswith("file:") or not scheme:
        raise UserError(f"--tracking-uri {uri}: bench records to an MLflow server or database, not a file store")
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(uri)
            try:
                tables = sqlalchemy.inspect(engine).get_table_names()
            finally:
                engine.dispose()
        except Exception as exc:
            raise UserError(f"cannot read MLflow store {uri}: {first_line(exc)}") from None
        if "experiments" not in tables:
            raise UserError(f"no MLflow store in {uri} (the database holds no MLflow tables)")
    import mlflow

    try:
        client = mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)
        return client
    except Exception as exc:
        raise UserError(f"cannot read MLflow store {uri}: {first_line(exc)}") from None


# --------------------------------------------------------------------------- reading a sweep

def worker_alive(owner: str | None, stale: bool | None) -> bool:
    """A trial's owner is alive: a process of this host that exists; on another host, a trial whose
    heartbeat is recent (``stale`` False), or one we cannot tell (no heartbeats: a journal)."""
    from ..run.coordination import owner_alive

    if owner is None:
        return False  # handed out a moment ago: its owner is written by the next call
    if owner.rpartition(":")[0] == socket.gethostname():
        return owner_alive(owner)
    return not stale


def read_rows(storage, suite: str | None = None) -> tuple[list[Row], int]:
    """The rows of every study this version wrote (of ``suite``, if given), and how many studies
    were skipped (another version's, or not the runner's)."""
    import optuna
    from optuna.trial import TrialState

    from ..compat.optuna_storage import stale_trial_numbers
    from ..run.coordination import FINISHED
    from ..run.study import ROLE_FINAL, ROLE_TUNING, study_cell, study_role

    rows: dict[tuple, Row] = {}
    skipped = 0
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        cell, role = study_cell(summary), study_role(summary)
        if cell is None or role not in (ROLE_TUNING, ROLE_FINAL):
            skipped += 1
            continue
        if suite is not None and cell.experiment.suite != suite:
            continue
        e = cell.experiment
        row = rows.setdefault((e.suite, e), Row(e.suite, e, budget=e.trials))
        row.cells.add(cell)
        study = optuna.load_study(study_name=summary.study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler(seed=0))
        trials = study.get_trials(deepcopy=False)
        stale = stale_trial_numbers(storage, study) if any(t.state == TrialState.RUNNING for t in trials) else set()
        for t in trials:
            if t.state == TrialState.RUNNING and worker_alive(t.user_attrs.get("owner"),
                                                              None if stale is None else t.number in stale):
                row.workers.add(t.user_attrs["owner"])
        if role == ROLE_TUNING:
            row.tuning_studies += 1
            for t in trials:
                row.trials.add(t, FINISHED)
        else:
            keys, done, diverged = set(), set(), set()
            for t in trials:
                row.fits.add(t, (TrialState.COMPLETE,))
                if t.state == TrialState.FAIL and any(t.user_attrs.get(r) for r in REFUSED):
                    continue
                key = t.user_attrs.get("run_key")
                keys.add(key)
                row.seeds.add(t.user_attrs.get("seed"))
                if t.state == TrialState.COMPLETE:
                    done.add(key)
                elif t.state == TrialState.FAIL and str(t.user_attrs.get("failure_reason", "")).startswith("diverged"):
                    diverged.add(key)
            row.fit_keys += len(keys)
            row.fits_left += len(keys - done - diverged)
            if trials:
                row.queued_cells.add(cell)
                if not any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials) \
                        and study.user_attrs.get("queued"):
                    row.finished_cells.add(cell)
    return list(rows.values()), skipped


def count_mlflow(client, rows: list[Row]) -> None:
    """Each row's final fits MLflow holds FINISHED (distinct run keys: what `bench report` counts)."""
    from .. import tracking
    from ..identity import Experiment

    for suite in sorted({r.suite for r in rows}):
        exp = client.get_experiment_by_name(tracking.experiment_name(suite))
        keys: dict = {}
        if exp is not None:
            runs = client.search_runs([exp.experiment_id], "tags.phase = 'final' and attributes.status = 'FINISHED'",
                                      max_results=50000)
            for run in runs:
                try:
                    experiment = Experiment.from_json(run.data.tags.get(tracking.EXPERIMENT_TAG))
                except ValueError:
                    continue
                keys.setdefault(experiment, set()).add(run.data.tags.get("run_key"))
        for row in rows:
            if row.suite == suite:
                row.mlflow_finished = len(keys.get(row.experiment, ()))


# --------------------------------------------------------------------------- the estimate

def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def duration(seconds: float) -> str:
    """``2 h 05 min``, ``3 min 20 s``, ``45 s``."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min {s:02d} s" if m else f"{s} s"


def time_left(rows: list[Row], workers: int) -> str:
    """Mean wall time per trial and per fit (the row's, else the sweep's) x what remains, over the
    workers alive."""
    all_trials = [s for r in rows for s in r.trials.seconds]
    all_fits = [s for r in rows for s in r.fits.seconds]
    trials_left = fits_left = 0
    work = 0.0
    unmeasured, unqueued = [], 0
    for r in rows:
        t_left = max(r.trials_total - r.trials.states[DONE], 0)
        f_left = r.fits_remaining
        if f_left is None:
            f_left, unqueued = r.fits_left, unqueued + r.unqueued
        trials_left, fits_left = trials_left + t_left, fits_left + f_left
        for left, own, every, what in ((t_left, r.trials.seconds, all_trials, "trial"),
                                       (f_left, r.fits.seconds, all_fits, "final fit")):
            mean = _mean(own) or _mean(every)
            if left and mean is None:
                unmeasured.append(what)
            elif left:
                work += left * mean
    if not trials_left and not fits_left and not unqueued:
        return "time left: none; every trial and final fit of the studies opened so far is done"
    remaining = f"{trials_left} trials and {fits_left} final fits remain"
    if unqueued:
        remaining += f", and the fits of {unqueued} stud{'y' if unqueued == 1 else 'ies'} still tuning (not queued yet)"
    if workers == 0:
        return f"time left: no worker is alive; {remaining}: rerun the same `bench run` to finish"
    if unmeasured:
        return (f"time left: not measurable yet (no {' or '.join(sorted(set(unmeasured)))} has finished); "
                f"{remaining}")
    mean_t, mean_f = _mean(all_trials), _mean(all_fits)
    means = ", ".join(x for x in (f"a trial {mean_t:.0f} s" if mean_t is not None else "",
                                  f"a fit {mean_f:.0f} s" if mean_f is not None else "") if x)
    estimate = f"about {duration(work / workers)}" + (" plus those fits" if unqueued else "")
    return (f"time left: {estimate} ({remaining}; measured so far: {means}; "
            f"over {workers} worker{'s' if workers != 1 else ''} alive)")


# --------------------------------------------------------------------------- `bench run --wait`

@functools.lru_cache(maxsize=4)
def _cached_storage(location: str):
    return open_storage_readonly(location)


def progress_line(storage: str | None, out: str | Path) -> str:
    """One line for `bench run --wait`'s progress bar: trials and final fits done of those known."""
    rows, _ = read_rows(_cached_storage(storage_location(storage, out)))
    trials = sum(r.trials.states[DONE] for r in rows), sum(r.trials_total for r in rows)
    fits_done = sum(r.fits.states[DONE] for r in rows)
    totals = [r.fits_total for r in rows]
    fits_total = "?" if any(t is None for t in totals) else sum(totals)
    workers = len({w for r in rows for w in r.workers})
    return f"trials {trials[0]}/{trials[1]}, fits {fits_done}/{fits_total}, {workers} workers alive"
