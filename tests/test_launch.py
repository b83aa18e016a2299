"""`bench run --launcher slurm|local --jobs N` (issue 30): the workers of a run as ONE submitit job
array sharing the run's stores.

- Slurm without a cluster: the sbatch script of the array is read, never run. `--dry-run` prints
  it from submitit's own renderer (``bench.compat.submitit_jobs.array_script``) with only a stand-in
  ``srun`` on PATH and no ``sbatch`` anywhere on it; a real submission goes to a stand-in ``sbatch``
  that records the script it is given and answers as sbatch does. Both must be the same script.
- Local: submitit's LocalExecutor runs a tiny sweep to the end (exact counts in both stores), and a
  worker preempted mid-trial (SIGUSR2, what Slurm sends) is requeued by submitit and resumes from
  the stores.
- Refusals: stores that workers on other hosts cannot share, and flags that need a launcher, are
  one line, exit 2, nothing submitted, nothing written.
"""
from __future__ import annotations

import inspect
import os
import shutil
import signal
import socket
import sys
import time

import mlflow
import optuna
import pytest
import submitit
from optuna.trial import TrialState

from bench import tracking
from bench.cli import main
from bench.run.study import open_storage
from conftest import find_study

PG = "postgresql+psycopg://bench:secret@db-host/optuna"
MLFLOW = "http://mlflow-host:5000"
TINY = ["--methods", "linear", "--tasks", "digits", "--trials", "2", "--epochs", "1", "--seeds", "1"]
SLURM = ["--launcher", "slurm", "--jobs", "3", "--partition", "gpu", "--gpus-per-task", "1", "--cpus-per-task", "8",
         "--mem", "32G", "--time", "1-00:00:00", "--account", "proj", "--qos", "high",
         "--slurm-extra", "constraint=a100", "--slurm-extra", "mail-type=END"]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """PATH holds a stand-in ``srun`` (submitit looks for it to know it is on a cluster) and a
    stand-in ``sbatch`` that records the script and argv it gets and prints sbatch's answer; no real
    Slurm command can be reached (PATH is only this folder: python is called by its full path)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-record"
    bin_dir.mkdir()
    mkdir, cp = shutil.which("mkdir"), shutil.which("cp")  # found now: PATH holds only bin_dir below
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\n{mkdir} -p "{record}"\n{cp} "$1" "{record}/script.sh"\n'
                                    f'echo "$@" > "{record}/argv"\necho "Submitted batch job 4242"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return record


@pytest.fixture
def no_store_servers(monkeypatch):
    """The stores' servers of these tests do not exist: the launcher's opening them is recorded."""
    opened = []
    monkeypatch.setattr("bench.run.context.open_stores", lambda spec: opened.append((spec.storage, spec.tracking_uri)))
    return opened


def script_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


# --------------------------------------------------------------------------- the Slurm job array

def test_slurm_array_script_has_the_settings_command_and_environment(tmp_path, fake_slurm, no_store_servers, capsys):
    out, logs = tmp_path / "out", tmp_path / "logs"
    argv = ["run", *TINY, *SLURM, "--storage", PG, "--tracking-uri", MLFLOW, "--out", str(out), "--log-dir", str(logs)]

    assert main([*argv, "--dry-run"]) == 0
    preview = capsys.readouterr().out
    assert not fake_slurm.exists() and not logs.exists() and not out.exists()  # a dry run submits and writes nothing
    preview = preview[preview.index("#!/bin/bash"):]

    assert main(argv) == 0
    printed = capsys.readouterr().out
    script = (fake_slurm / "script.sh").read_text()
    assert (fake_slurm / "argv").read_text().split()[0].endswith(".sh")  # sbatch got the script file, once
    assert script.strip() == preview.strip()  # what --dry-run shows is what is submitted

    sbatch = script_lines(script)
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH --time=1440", "#SBATCH --account=proj",
                 "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --mail-type=END",
                 "#SBATCH --signal=USR2@90", "#SBATCH --job-name=bench-demo",
                 f"#SBATCH --output={logs}/%A_%a_0_log.out"):
        assert line in sbatch, (line, sbatch)
    assert not any("--export" in line for line in sbatch)  # sbatch's default: the submitting shell's environment
    assert "export TQDM_DISABLE=1" in script and 'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"' in script
    command = script.strip().splitlines()[-1]
    assert command.startswith(f"srun --unbuffered --output {logs}/%A_%a_%t_log.out ")
    assert command.endswith(f"{sys.executable} -u -m submitit.core._submit {logs}")

    # one pickled worker per array task, each the same request with the stores pinned
    pickles = sorted(logs.glob("4242_*_submitted.pkl"))
    assert [p.name for p in pickles] == [f"4242_{i}_submitted.pkl" for i in range(3)]
    from bench.run.array_worker import ArrayWorker
    from bench.run.spec import RunRequest

    requests = set()
    for p in pickles:
        delayed = submitit.helpers.DelayedSubmission.load(p)
        assert isinstance(delayed.function, ArrayWorker)
        requests.add(delayed.args[0])
    assert len(requests) == 1
    request = RunRequest.from_json(requests.pop())
    assert (request.storage, request.tracking_uri, request.out) == (PG, MLFLOW, str(out.resolve()))
    assert (request.methods, request.tasks, request.trials, request.seeds) == ("linear", "digits", 2, "1")
    assert no_store_servers == [(PG, MLFLOW)]  # the stores opened once, by the launcher

    assert "Slurm job array 4242" in printed and str(logs) in printed and "4242_0_0_log.out" in printed
    assert f"bench status --suite demo --storage {PG} --tracking-uri {MLFLOW}" in printed
    assert "squeue -j 4242" in printed


def test_the_submitit_internals_we_use_are_there():
    """bench.compat.submitit_jobs renders the array script with these: a submitit that renames or
    changes them fails here, by name."""
    from submitit.slurm import slurm

    method = getattr(submitit.SlurmExecutor, "_make_submission_file_text", None)
    assert method is not None, "SlurmExecutor._make_submission_file_text is gone: update bench/compat/submitit_jobs.py"
    assert list(inspect.signature(method).parameters) == ["self", "command", "uid"]
    assert isinstance(inspect.getattr_static(submitit.SlurmExecutor, "_submitit_command_str"), property)
    assert "map_count" in inspect.signature(slurm._make_sbatch_string).parameters
    # the array path still sets map_count on a copy of the executor's parameters
    assert 'parameters["map_count"] = n' in inspect.getsource(submitit.SlurmExecutor._internal_process_submissions)


def test_a_preempted_worker_resubmits_itself_with_its_request():
    from bench.run.array_worker import ArrayWorker

    worker = ArrayWorker()
    delayed = worker.checkpoint('{"suite": "demo"}')
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is worker and delayed.args == ('{"suite": "demo"}',) and delayed.kwargs == {}


@pytest.mark.parametrize("text, minutes", [("90", 90), ("90:30", 91), ("2:00:00", 120), ("1-0", 1440),
                                           ("1-02:30", 1590), ("0-00:00:59", 1)])
def test_time_in_every_form_sbatch_takes(text, minutes):
    from bench.run.launch import parse_time

    assert parse_time(text) == minutes


# --------------------------------------------------------------------------- refusals

REFUSED_STORES = [
    ([], "the Optuna storage is the SQLite file under --out"),
    (["--storage", "sqlite:///{t}/o.db"], "is a SQLite file; use PostgreSQL or MySQL"),
    (["--storage", "{t}/optuna.journal"], "is a journal file; use PostgreSQL or MySQL"),
    (["--storage", PG, "--tracking-uri", "sqlite:///{t}/m.db"], "is a local file; use an MLflow server"),
    (["--storage", PG, "--tracking-uri", "file:///{t}/mlruns"], "is a local file; use an MLflow server"),
    (["--storage", PG, "--tracking-uri", "{t}/mlruns"], "is a local file; use an MLflow server"),
    (["--storage", PG], "the default MLflow store sqlite:///"),
]


@pytest.mark.parametrize("extra, needle", REFUSED_STORES,
                         ids=["default-sqlite", "sqlite", "journal", "mlflow-sqlite", "mlflow-file", "mlflow-path",
                              "mlflow-default"])
def test_local_file_stores_are_refused_for_slurm(tmp_path, fake_slurm, capsys, extra, needle):
    out = tmp_path / "out"
    extra = [a.replace("{t}", str(tmp_path)) for a in extra]
    assert main(["run", *TINY, *SLURM, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and "--launcher slurm runs workers on other hosts" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not fake_slurm.exists() and not out.exists()  # nothing submitted, nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


def test_mlflow_tracking_uri_from_the_environment_is_checked_too(tmp_path, fake_slurm, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert main(["run", *TINY, *SLURM, "--storage", PG, "--out", str(tmp_path / "out")]) == 2
    assert "$MLFLOW_TRACKING_URI sqlite:///" in capsys.readouterr().err
    assert not fake_slurm.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--launcher", "slurm", "--jobs", "2"], "--launcher slurm needs --time"),
    (["--launcher", "slurm", "--time", "60"], "--launcher slurm needs --jobs N"),
    (["--launcher", "slurm", "--jobs", "2", "--time", "soon"], "--time takes a Slurm time"),
    (["--launcher", "slurm", "--jobs", "2", "--time", "60", "--mem", "lots"], "--mem takes a size"),
    (["--launcher", "slurm", "--jobs", "2", "--time", "60", "--slurm-extra", "constraint"], "--slurm-extra takes KEY=VALUE"),
    (["--launcher", "slurm", "--jobs", "2", "--time", "60", "--slurm-extra", "array=0-99"], "is set by the launcher"),
    (["--launcher", "slurm", "--jobs", "2", "--time", "60", "--cpus-per-task", "0"], "--cpus-per-task must be >= 1"),
    (["--partition", "gpu"], "--partition needs --launcher slurm"),
    (["--wait"], "--wait needs --launcher"),
    (["--launcher", "local", "--partition", "gpu"], "--partition is a Slurm setting"),
    (["--launcher", "local", "--jobs", "2", "--force"], "--force redoes finished work and runs in one worker"),
    (["--launcher", "local", "--devices", "0"], "--devices pins plain local workers to GPUs"),
])
def test_bad_launcher_flags_one_line_exit_2_nothing_written(tmp_path, fake_slurm, capsys, argv, needle):
    out = tmp_path / "out"
    stores = ["--storage", PG, "--tracking-uri", MLFLOW] if "slurm" in argv else []
    assert main(["run", *TINY, *argv, *stores, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not fake_slurm.exists() and not out.exists()


def test_slurm_without_srun_is_one_line(tmp_path, monkeypatch, capsys, no_store_servers):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    argv = ["run", *TINY, "--launcher", "slurm", "--jobs", "2", "--time", "60", "--storage", PG,
            "--tracking-uri", MLFLOW, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Could not detect \"srun\"" in err and "Slurm login node" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and no_store_servers == []


# --------------------------------------------------------------------------- the local executor, for real

def _counts(out):
    storage = open_storage(None, out)
    tuning, final = find_study(storage, "linear", "digits"), find_study(storage, "linear", "digits", final=True)
    states = lambda study: sorted(t.state.name for t in study.get_trials(deepcopy=False))  # noqa: E731
    client = mlflow.MlflowClient(tracking.default_tracking_uri(out))
    exp = client.get_experiment_by_name(tracking.experiment_name("demo"))
    runs = client.search_runs([exp.experiment_id], "", max_results=1000)
    by = lambda phase, status: [r for r in runs if r.data.tags["phase"] == phase and r.info.status == status]  # noqa: E731
    return tuning, final, states, by


def test_local_launcher_runs_a_tiny_sweep_to_the_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", *TINY, "--launcher", "local", "--jobs", "2", "--out", str(out), "--wait"]) == 0
    printed = capsys.readouterr().out
    assert "submitted 2 workers as local submitit jobs" in printed and "every worker finished" in printed

    tuning, final, states, by = _counts(out)
    assert states(tuning) == ["COMPLETE", "COMPLETE"]  # exactly --trials 2, nothing waiting or running
    assert states(final) == ["COMPLETE"] and final.trials[0].user_attrs["seed"] == 1  # one seed, one fit
    assert len(by("trial", "FINISHED")) == 2 and len(by("final", "FINISHED")) == 1
    assert not by("final", "RUNNING") and not by("trial", "RUNNING")
    assert {r.data.tags["seed"] for r in by("final", "FINISHED")} == {"1"}
    logs = sorted((out / "slurm").glob("*_0_log.out"))
    assert len(logs) == 2 and all("Job completed successfully" in p.read_text() for p in logs)
    assert (out / "demo.md").is_file()  # --wait renders the report at the end


def test_a_preempted_local_worker_is_requeued_and_resumes_from_the_stores(tmp_path, capsys):
    """SIGUSR2 (Slurm's preemption signal, submitit's default) to the worker while it runs a trial:
    submitit checkpoints it (the same worker, the same request) and requeues it; the new process
    finishes the sweep from what the stores hold, nothing lost, nothing done twice."""
    out = tmp_path / "out"
    argv = ["run", "--methods", "lora", "--tasks", "digits", "--trials", "2", "--epochs", "3", "--seeds", "1",
            "--launcher", "local", "--jobs", "1", "--out", str(out), "--no-report"]
    assert main(argv) == 0  # returns once submitted
    capsys.readouterr()
    storage = open_storage(None, out)
    deadline = time.monotonic() + 240
    owner = None
    while owner is None:
        assert time.monotonic() < deadline, "the worker never started a trial"
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            owner = next((t.user_attrs["owner"] for t in running if "owner" in t.user_attrs), None)
        time.sleep(0.2)
    host, _, pid = owner.rpartition(":")
    assert host == socket.gethostname()
    os.kill(int(pid), signal.SIGUSR2)

    results = lambda: list((out / "slurm").glob("*_result.pkl"))  # noqa: E731
    while not results():
        assert time.monotonic() < deadline + 120, "the requeued worker never finished"
        time.sleep(1)
    log = next((out / "slurm").glob("*_0_log.out")).read_text()
    assert "this job is preempted" in log and "Requeued job" in log and "Job completed successfully" in log

    storage = open_storage(None, out)
    tuning, final = find_study(storage, "lora", "digits"), find_study(storage, "lora", "digits", final=True)
    trials = tuning.get_trials(deepcopy=False)
    # the trial the signal hit failed and was queued again with its parameters; the budget of 2 finished once
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs["owner"] == owner and trials[1].params == trials[0].params
    finished = trials[1:]
    assert [t.state for t in final.get_trials(deepcopy=False)] == [TrialState.COMPLETE]
    pids = {t.user_attrs["owner"].rpartition(":")[2] for t in finished + final.get_trials(deepcopy=False)}
    assert pids - {pid}, "the requeued worker (a new process) did none of the work"
    client = mlflow.MlflowClient(tracking.default_tracking_uri(out))
    exp = client.get_experiment_by_name(tracking.experiment_name("demo"))
    runs = client.search_runs([exp.experiment_id], "", max_results=100)
    finished_runs = sorted(r.data.tags["phase"] for r in runs if r.info.status == "FINISHED")
    assert finished_runs == ["final", "trial", "trial"]  # each trial and the fit once
    assert not [r for r in runs if r.info.status == "RUNNING"]
