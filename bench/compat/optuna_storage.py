"""Optuna storage calls that Optuna documents as library-internal (``BaseStorage``'s methods are
"not supposed to be directly accessed by library users"), used because its public API has no
equivalent: ``study.ask()`` pops a waiting trial but creates a new one when another worker took
the last, and ask-and-tell leaves heartbeats to the caller. Everything else goes through ``Study``.
"""
from __future__ import annotations

import optuna
from optuna.trial import TrialState


def trial_id(storage, study: optuna.Study, number: int) -> int:
    """The storage's id of the study's trial ``number`` (``Trial`` keeps it private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def claim_waiting(storage, study: optuna.Study, number: int, owner: str) -> optuna.Trial | None:
    """The WAITING trial ``number`` taken for this worker as RUNNING, with ``owner`` as its user
    attribute; None when another worker took it first. The storage's compare-and-set
    (``set_trial_state_values`` succeeds only on a WAITING trial) is what ``study.ask`` does
    inside; the ``Trial`` is then built as ``ask`` builds it."""
    tid = trial_id(storage, study, number)
    try:
        if not storage.set_trial_state_values(tid, TrialState.RUNNING):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    storage.set_trial_user_attr(tid, "owner", owner)
    return optuna.Trial(study, tid)


def fail_running(storage, study: optuna.Study, number: int) -> bool:
    """Set the RUNNING trial ``number`` to FAIL; False when another worker finished or failed it first."""
    try:
        return bool(storage.set_trial_state_values(trial_id(storage, study, number), TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def heartbeat_interval(storage) -> int | None:
    """The storage's heartbeat interval; None when it has none (the journal, or an RDB without)."""
    interval = getattr(storage, "get_heartbeat_interval", None)  # Optuna's BaseHeartbeat, i.e. RDBStorage
    return interval() if interval is not None else None


def record_heartbeat(storage, tid: int) -> None:
    """One heartbeat of the running trial ``tid`` (what ``study.optimize``'s own thread records)."""
    storage.record_heartbeat(tid)


def serialize_sqlite(storage: optuna.storages.RDBStorage) -> None:
    """Make each of the storage's SQLite transactions take the database's write lock when it
    begins (``BEGIN IMMEDIATE``: SQLAlchemy's documented recipe for pysqlite), on the storage's
    SQLAlchemy engine (``RDBStorage.engine``).

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


def stale_trial_numbers(storage, study: optuna.Study) -> set[int] | None:
    """The numbers of the study's RUNNING trials whose last heartbeat is older than the storage's
    grace period (``RDBStorage._get_stale_trial_ids``, what ``fail_stale_trials`` fails; a trial
    with no heartbeat yet is not stale); None when the storage keeps no heartbeats. Read only:
    `bench status` counts the workers alive with it, and fails nothing."""
    if heartbeat_interval(storage) is None:
        return None
    stale = set(storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name)))
    if not stale:
        return set()
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if trial_id(storage, study, t.number) in stale}
