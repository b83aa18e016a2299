"""What every run logs to MLflow, by name. The runner writes these; ``bench report`` reads them.

One experiment per suite (``peft-bench/<suite>``); one run per (method, task, seed, phase). Every
tag, param and metric a trial or final run records, and every user attribute of the Optuna studies
and trials, is declared once in ``bench.tracking_schema.SCHEMA``, with the names below as
constants; ``python -m bench.reference_docs`` renders it as docs/reference/tracking.md, and
tests/test_docs.py checks a real run against it both ways.
The experiment tag (``bench.identity.Experiment.to_json``) is the only record read back.
Only runs with status FINISHED count; a killed or failed run is marked FAILED/KILLED.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

EXPERIMENT_PREFIX = "peft-bench/"
EXPERIMENT_TAG = "experiment"  # JSON of the run's bench.identity.Experiment
EXPERIMENT_KEY_TAG = "experiment_key"  # its short hash
DEVICE_NAME_PARAM = "device_name"  # the device class a run's throughput and memory come from ("CPU", a GPU's name)
COMPILE_TAG = "compile"  # under --compile: "compiled", or "eager: <why>" for a method with compiles = False
RANDOM_INIT = "none"  # `--pretrained none`, and the weights_sha256 param of its runs: a random backbone
PHASE_TRIAL = "trial"
PHASE_FINAL = "final"

# metric names
TEST_ACC = "test_acc"
VAL_ACC = "val_acc"
TRAIN_LOSS = "train_loss"
LR = "lr"
PARAMS_BACKBONE = "params_backbone"
PARAMS_TOTAL = "params_total"
TRAIN_IMG_PER_S = "train_img_per_s"
EVAL_IMG_PER_S = "eval_img_per_s"
PEAK_MEM_MB = "peak_mem_mb"
WALL_S = "wall_s"
DATA_WAIT_FRAC = "data_wait_frac"  # per epoch (bench.train)

# Optuna user attributes of a study (bench.run.study)
IDENTITY_ATTR = "identity"  # its cell, ``Cell.to_dict()``
ROLE_ATTR = "role"  # what its trials are: "tuning" or "final fits"

# the packages whose versions every run logs (``version_<name>`` params); peft: its tuners' counts vary by version
VERSIONED_PACKAGES = ("torch", "timm", "optuna", "mlflow", "peft", "peft-bench")


def experiment_name(suite: str) -> str:
    return f"{EXPERIMENT_PREFIX}{suite}"


def default_tracking_uri(out: str | Path = "runs") -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite file under the output folder."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return sqlite_url(Path(out) / "mlflow.db")


def sqlite_url(path: str | Path) -> str:
    """``sqlite:///<absolute path>`` for a store file the tool names itself (under ``--out``). A path
    that a URL does not carry verbatim is refused (one line) rather than quoted: SQLAlchemy reads
    ``?`` as the start of the query string (``--out users.db?x`` would open ``users.db``) and
    unquotes ``%XX`` (``a%41b`` would open ``aAb``), and URL parsers drop control characters."""
    from .errors import UserError

    path = Path(path).resolve()
    bad = sorted({c for c in str(path) if c in "?%" or ord(c) < 32 or ord(c) == 127})
    if bad:
        raise UserError(f"the SQLite store {str(path)!r} cannot be named by a URL: its path holds "
                        f"{', '.join(map(repr, bad))} (the URL would open another file); use another --out "
                        "folder, or pass the stores' URLs (--storage, --tracking-uri)")
    return f"sqlite:///{path}"


def sqlite_path(uri: str) -> Path | None:
    """The file a ``sqlite:///`` URI opens, as SQLAlchemy reads it (query string cut, ``%XX``
    unquoted); None for another kind of URI or a malformed one."""
    if not uri.startswith("sqlite:///"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(uri).database
    except Exception:  # sqlalchemy's ArgumentError and others for a malformed URL
        return None
    return Path(database) if database else None


def check_sqlite(path: str | Path | None, what: str) -> None:
    """One UserError line if the SQLite file ``path`` (a store: ``what``, e.g. "MLflow store") is
    damaged: not a database, truncated, a page overwritten or zeroed. SQLite only notices such
    damage when a query reaches the page, so a store could otherwise be read and written on (a
    half-read leaderboard, a write that hits the page as a traceback). ``PRAGMA quick_check``
    walks every page once (integrity_check also cross-checks each index with its table: the same
    verdicts on every corruption tried, 7x slower): 2 ms for a demo run's store, 0.4 s for a
    500 MB one. A file that is not there (or empty) is left to the store to create, and one that
    cannot be opened or is locked past the timeout to the store's own open, which says so."""
    import sqlite3

    from .errors import UserError, first_line

    if path is None:
        return
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
    except OSError:
        return
    problem = None
    try:
        # mode=rw: never creates the file; a hot journal (a writer killed mid-commit) is rolled back
        # as the store itself would, not reported as damage
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=120)
        try:
            con.text_factory = lambda raw: raw.decode("utf-8", "replace")
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
        if rows != [("ok",)]:
            lines = [line for row in rows for line in str(row[0]).splitlines() if not line.startswith("***")]
            problem = f"SQLite quick_check: {(lines or ['not ok'])[0]}"
    except sqlite3.OperationalError:  # cannot open, locked: not damage
        return
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # SQLITE_CORRUPT, SQLITE_NOTADB, a garbled schema
        problem = first_line(exc)
    if problem:
        raise UserError(f"cannot read {what} {path}: the file is damaged ({problem}); move it away (a new run "
                        "starts a fresh one) or restore it from a backup")


def git_commit(root: str | Path | None = None) -> str:
    """HEAD of the project checkout (``-dirty`` when it has uncommitted changes), or ``unknown``.

    The checkout is the folder holding the ``bench`` package (``root``), never the current
    directory, and only when that folder is the top of its git work tree: an installed wheel lives
    in site-packages, which is no checkout, or sits inside some other repository (a venv made in a
    user's project); both give ``unknown``, never another project's commit.
    """
    import subprocess

    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        if not top or Path(top).resolve() != root.resolve():
            return "unknown"
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[f"version_{pkg.replace('-', '_')}"] = version(pkg)
        except PackageNotFoundError:
            out[f"version_{pkg.replace('-', '_')}"] = "unknown"
    return out


def fail_fast() -> None:
    """Make a dead or unreachable tracking server fail in seconds, not after minutes of MLflow's
    default retries (7 with exponential backoff: 4 min 12 s measured): one retry, 15 s a request.
    Every command that reads or writes a store calls it first (``connect``: run, tune, perf;
    ``bench.report.check_store``: report, compare); a user's own settings win. A SQL store that
    stops answering (or whose disk is full) is one line from ``bench.cli``, without the traceback
    MLflow also logs for it."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def connect(uri: str):
    """Point MLflow at ``uri``; a malformed or unreachable store is a UserError (one line)."""
    import mlflow

    from .errors import UserError, first_line

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO chatter about creating tables
    logging.getLogger("alembic").setLevel(logging.WARNING)
    fail_fast()
    # (no mlflow.set_tracking_uri: it also sets $MLFLOW_TRACKING_URI for the rest of the process)
    # workers started together on one SQLite file must not race to create its tables
    lock = contextlib.nullcontext()
    db = sqlite_path(uri)
    check_sqlite(db, "MLflow store")  # damaged: one line now, not a traceback (or worse, none) later
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = open(db.with_name(db.name + ".lock"), "w")
    try:
        with lock:
            if db is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            client = mlflow.MlflowClient(uri)
            client.search_experiments(max_results=1)
            return client
    except Exception as exc:  # mlflow raises many types for a bad URI / dead server
        raise UserError(f"cannot reach MLflow tracking store {uri!r}: {first_line(exc)}") from None


def experiment_id(client, suite: str, artifact_root: Path | None = None) -> str:
    """The suite's experiment, created on first use (safe when several workers race)."""
    name = experiment_name(suite)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        location = (artifact_root / suite).resolve().as_uri() if artifact_root else None
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_runs(client, exp_id: str, tags: dict[str, str], statuses: tuple[str, ...] = ("FINISHED",)) -> list:
    """Runs of the experiment whose tags equal ``tags`` and whose status is in ``statuses``."""
    clauses = [f"tags.{k} = '{v}'" for k, v in tags.items()]
    runs = client.search_runs([exp_id], filter_string=" and ".join(clauses), max_results=1000)
    return [r for r in runs if r.info.status in statuses]


class TrackedRun:
    """One MLflow run as a context manager: FINISHED when the block ends normally, FAILED on an
    exception (with its reason as a tag), KILLED on Ctrl-C. A SIGKILL leaves it RUNNING; the
    runner marks such runs FAILED when it next meets them."""

    def __init__(self, client, exp_id: str, name: str, tags: dict, params: dict):
        self.client = client
        self.run = client.create_run(exp_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
        self.id = self.run.info.run_id
        self.log_params(params)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, float(v), now, step) for k, v in sorted(metrics.items())])

    def set_tag(self, key: str, value) -> None:
        self.client.set_tag(self.id, key, str(value))

    def __enter__(self) -> "TrackedRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.client.set_terminated(self.id, "FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.client.set_terminated(self.id, "KILLED")
        else:
            self.client.set_tag(self.id, "failure_reason", f"{exc_type.__name__}: {exc}"[:500])
            self.client.set_terminated(self.id, "FAILED")
        return False
