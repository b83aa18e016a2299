"""The multi-host setup of Running at scale on a real PostgreSQL (issue 30): `bench run --jobs 2`
workers on a PostgreSQL Optuna storage and an MLflow tracking server whose backend store is the
same PostgreSQL divide a sweep exactly (every trial and every final fit once), and a worker killed
with SIGKILL mid-fit leaves nothing lost or done twice once the sweep is rerun.

The server comes from BENCH_TEST_POSTGRES_URL (`.ci/run` starts a throwaway one with
`.ci/postgres` and sets it). Each test creates its own databases on it (one for Optuna, one for
MLflow: both keep their schema version in a table named ``alembic_version``) and drops them after.
Without the URL these tests skip, except under CI=true, where they fail: a CI whose server did not
start must not pass by skipping them."""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from bench import tracking

URL_VAR = "BENCH_TEST_POSTGRES_URL"
METHODS, TASKS, TRIALS, SEEDS = ("linear", "lora"), ("digits",), 2, (1, 2)
PAIRS = [(m, t) for m in METHODS for t in TASKS]
EXPECTED_FITS = {(m, t, str(s)) for m, t in PAIRS for s in SEEDS}
# a small demo sweep: 4 tuning trials and 4 final fits
ARGS = ["--methods", ",".join(METHODS), "--tasks", ",".join(TASKS), "--trials", str(TRIALS),
        "--seeds", ",".join(map(str, SEEDS)), "--no-report"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing(why: str):
    if _in_ci():
        pytest.fail(f"{why}; under CI=true the PostgreSQL tests must run (.ci/run starts the server "
                    "with .ci/postgres and installs psycopg through the `test` extra)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def server_url() -> str:
    """The PostgreSQL server's SQLAlchemy URL (``postgresql+psycopg://user@host:port/db``)."""
    url = os.environ.get(URL_VAR)
    if not url:
        _missing(f"{URL_VAR} is not set (e.g. eval \"$(.ci/postgres start)\")")
    if importlib.util.find_spec("psycopg") is None:
        _missing("psycopg is not installed (pip install -e '.[test]')")
    return url


@pytest.fixture
def new_database(server_url):
    """``new_database(purpose) -> URL`` of a fresh database on the server, dropped after the test."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(server_url)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)  # libpq's own form
    made = []

    def create(purpose: str) -> str:
        name = f"bench_test_{uuid.uuid4().hex[:12]}_{purpose}"
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return base.set(database=name).render_as_string(hide_password=False)

    yield create
    with psycopg.connect(admin, autocommit=True) as con:
        for name in made:  # FORCE: a worker killed by the test may leave a connection behind
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(new_database, tmp_path):
    """``mlflow server`` on a database of its own, artifacts under tmp_path; its http URL."""
    port, log = _free_port(), tmp_path / "mlflow_server.log"
    exe = Path(sys.executable).parent / "mlflow"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runner process
    with log.open("w") as fh:
        proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", new_database("mlflow"),
                                 "--artifacts-destination", str(tmp_path / "artifacts"),
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer in 120 s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc, signal.SIGKILL)  # uvicorn's worker must not outlive the test
        proc.wait(timeout=15)


def _kill_group(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def bench_run(out: Path, storage: str, tracking_uri: str, *extra: str, jobs: int = 2) -> subprocess.Popen:
    """`bench run --jobs 2` (two local worker processes) on the shared stores, in its own process
    group (stopped with its workers if the test fails); its output goes to a log file beside
    ``out`` (a pipe nobody reads while the test polls could fill up and stall it)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    log = out.parent / f"bench_run_{time.monotonic_ns()}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bench", "run", *ARGS, "--jobs", str(jobs), "--out", str(out),
                                 "--storage", storage, "--tracking-uri", tracking_uri, *extra],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


@pytest.fixture
def runs():
    """Collects the `bench run` processes of a test; whatever is left of them is killed after it."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:  # the whole group: a worker can outlive its launcher
        _kill_group(p, signal.SIGKILL)
        p.wait(timeout=30)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """The exit code and output of a `bench run`."""
    proc.wait(timeout=timeout)
    return proc.returncode, proc.log.read_text()


def mlflow_runs(tracking_uri: str, phase: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(tracking.experiment_name("demo"))
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.phase = '{phase}'", max_results=1000)


def assert_sweep_done_exactly_once(storage_url: str, tracking_uri: str) -> None:
    """Every trial of the budget and every final fit once, in the Optuna storage and in MLflow, and
    each points at the other; nothing else in either store."""
    import optuna
    from optuna.trial import TrialState

    from conftest import find_study

    storage = optuna.storages.RDBStorage(storage_url)
    try:
        assert len(optuna.get_all_study_summaries(storage)) == 2 * len(PAIRS)  # tuning + final fits, no other
        every_trial_run, every_final_run = (mlflow_runs(tracking_uri, tracking.PHASE_TRIAL),
                                            mlflow_runs(tracking_uri, tracking.PHASE_FINAL))
        assert not [r for r in every_trial_run + every_final_run if r.info.status == "RUNNING"], "a run is left RUNNING"
        trial_runs = [r for r in every_trial_run if r.info.status == "FINISHED"]
        final_runs = [r for r in every_final_run if r.info.status == "FINISHED"]

        trained = Counter((r.data.tags["study"], r.data.tags["trial_number"]) for r in trial_runs)
        assert all(c == 1 for c in trained.values()), f"a trial was trained twice: {trained}"
        fitted = Counter((r.data.tags["method"], r.data.tags["task"], r.data.tags["seed"]) for r in final_runs)
        assert all(c == 1 for c in fitted.values()), f"a final fit was done twice: {fitted}"
        assert set(fitted) == EXPECTED_FITS
        by_id = {r.info.run_id: r for r in final_runs}

        for m, t in PAIRS:
            study = find_study(storage, m, t)
            finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
            assert len(finished) == TRIALS  # the budget, not overshot by the second worker
            assert len({tuple(sorted(tr.params.items())) for tr in finished}) == TRIALS, "one configuration ran twice"
            assert sum(bool(tr.user_attrs.get("default_trial")) for tr in finished) == 1
            assert all(tr.state == TrialState.FAIL for tr in study.trials if tr not in finished)  # surplus, dead
            # each finished trial trained exactly once in MLflow (a killed one's run is FAILED, not FINISHED)
            assert {n for (s, n) in trained if s == study.study_name} == {str(tr.number) for tr in finished}

            fits = find_study(storage, m, t, final=True)
            done = fits.get_trials(states=(TrialState.COMPLETE,))
            assert sorted(tr.user_attrs["seed"] for tr in done) == sorted(SEEDS)
            for tr in done:
                run = by_id[tr.user_attrs["mlflow_run_id"]]
                assert run.data.tags["run_key"] == tr.user_attrs["run_key"]
                assert run.data.tags["optuna_study"] == fits.study_name
                assert run.data.tags["optuna_trial"] == str(tr.number)
                assert tr.value == run.data.metrics["test_acc"]
            assert all(tr.state == TrialState.FAIL for tr in fits.trials if tr not in done)
    finally:
        storage.engine.dispose()  # before the database is dropped


@pytest.mark.parametrize("launcher", [(), ("--launcher", "local", "--wait")], ids=["jobs", "launcher-local"])
def test_two_workers_on_postgresql_and_an_mlflow_server_divide_the_sweep_exactly(
        new_database, mlflow_server, runs, tmp_path, launcher):
    """--jobs 2 as local worker processes, and as the job array of submitit's local executor (the
    path a Slurm sweep takes, issue 30): each divides the sweep exactly."""
    storage = new_database("optuna")
    runs.append(bench_run(tmp_path / "out", storage, mlflow_server, "--epochs", "1", *launcher))
    code, out = finish(runs[-1])
    assert code == 0, out[-4000:]
    assert_sweep_done_exactly_once(storage, mlflow_server)
    owners = {r.data.tags["owner"] for r in mlflow_runs(mlflow_server, tracking.PHASE_TRIAL)
              + mlflow_runs(mlflow_server, tracking.PHASE_FINAL)}
    assert len(owners) == 2, f"the work was not divided between the two workers: {owners}"


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started, in the order it started them (increasing process ids)."""
    found = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]
    return sorted(c for c in found if _parent_pid(c) == pid)


def test_a_worker_killed_mid_fit_loses_nothing_and_a_rerun_does_nothing_twice(
        new_database, mlflow_server, runs, tmp_path):
    """SIGKILL one of the two workers while it trains a final fit: its MLflow run and its Optuna
    trial stay RUNNING, and the command reports the failure. The surviving worker (on one host it
    sees at once that the process is gone; across hosts the heartbeat tells it after the grace
    period) or the rerun (one worker) marks both failed and redoes the fit. After the rerun every
    trial and fit is done exactly once, and the killed run is FAILED."""
    import mlflow

    storage = new_database("optuna")
    args = ("--epochs", "2")  # a fit long enough to be caught while it trains
    first = bench_run(tmp_path / "out", storage, mlflow_server, *args)
    runs.append(first)
    client = mlflow.MlflowClient(mlflow_server)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and first.poll() is None:
        exp = client.get_experiment_by_name(tracking.experiment_name("demo"))
        if exp is not None:
            for run in client.search_runs([exp.experiment_id],
                                          f"tags.phase = '{tracking.PHASE_FINAL}' and attributes.status = 'RUNNING'"):
                pid = int(run.data.tags["owner"].rpartition(":")[2])
                # The first worker `bench run` started: the one it waits for first, so it reaps the
                # killed process at once. A worker killed while the launcher still waits for the
                # other stays a zombie until then, and a zombie looks alive to the survivor
                # (os.kill(pid, 0) succeeds), which then waits the heartbeat's grace (180 s).
                if pid != min(_children(first.pid), default=None):
                    continue
                # frozen first, so that the fit cannot end between this check and the kill
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.5)  # a request the worker had already sent lands first
                if client.get_run(run.info.run_id).info.status == "RUNNING":
                    os.kill(pid, signal.SIGKILL)
                    victim = run
                    break
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    if victim is None:
        ended = first.poll() is not None
        pytest.fail("no final fit was caught running" + (": " + finish(first)[1][-3000:] if ended else " in 300 s"))
    code, out = finish(first)
    assert code != 0, "the run whose worker was killed reported success"

    second = bench_run(tmp_path / "out", storage, mlflow_server, *args, jobs=1)  # the rerun: one worker is enough
    runs.append(second)
    code, out2 = finish(second)
    assert code == 0, out2[-4000:]

    killed = client.get_run(victim.info.run_id)
    assert killed.info.status == "FAILED" and "worker died" in killed.data.tags.get("failure_reason", "")
    redone = [r for r in mlflow_runs(mlflow_server, tracking.PHASE_FINAL)
              if r.data.tags["run_key"] == victim.data.tags["run_key"] and r.info.status == "FINISHED"]
    assert len(redone) == 1 and redone[0].info.run_id != victim.info.run_id
    assert_sweep_done_exactly_once(storage, mlflow_server)
